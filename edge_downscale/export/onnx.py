"""ONNX export (optimum-onnx, with KV cache) and onnxruntime weight quantisation.

    export_onnx("specialist/", "specialist-onnx/")                  # fp32, passes onnx.checker
    quantize_onnx("specialist-onnx/", "specialist-int4/", "int4")   # weight-only 4 bit, blocks of 32

An export directory holds ``model.onnx`` (+ ``model.onnx_data`` past 2 GB), ``config.json``, the
source's tokenizer files and ``export_info.json`` (how it was made: options, versions, timing). The
runtime scores it with :class:`edge_downscale.runtime.onnx.OnnxBackend`, without torch. Every output
appears atomically: a failed or refused export leaves nothing behind.

These functions check files (onnx.checker, finite weights), not quality: the one quality gate is
:func:`edge_downscale.export.export_model`'s, bits-per-byte and KL against the torch source on
held-out text, recorded in each artifact's ``model.json``.

Quantisations (``ONNX_QUANTS``) of optimum's graph; the fused graph's are ``FUSED_OPTIONS``:
  int8  weight-only MatMulNBits, 8 bits, symmetric, one fp32 scale per ``block_size`` weights, with
        onnxruntime's int8 compute (``accuracy_level`` 4: activations quantised per block at run
        time). See ``ACCURACY_LEVEL`` for why not dynamic (MatMulInteger) quantisation.
  int4  weight-only MatMulNBits, 4 bits, symmetric, one fp32 scale per ``block_size`` weights. A tied
        embedding / LM head stays fp32: the head reads the table through a Transpose, so the
        quantiser sees no constant weight there (on SmolLM2-135M: 113 MB of the 181 MB).
  fp16  float16 weights and activations, for the CUDA execution provider (logits stay float32).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from .._env import library_versions
from .._io import atomic_path
from ..artifacts import MODEL_FILES
from ..errors import EdgeDownscaleError, require
from .errors import ExportError
from .gptq import CALIBRATION_TOKENS

TASK = "text-generation-with-past"
MODEL_FILE = MODEL_FILES["onnx"]
INFO_FILE = "export_info.json"
ONNX_QUANTS = ("int8", "int4", "fp16")
NBITS = {"int8": 8, "int4": 4}  # both integer types are weight-only MatMulNBits
# MatMulNBits compute type (onnxruntime's accuracy_level; None = its default, float compute).
# int8 with 8-bit compute is the only int8 recipe measured here that passes its gate, is faster than fp32
# and scores the same on every x86 kernel (benchmarks/onnx_quant_variants.py, benchmarks/int8_saturation.py):
# - dynamic quantisation (MatMulInteger, uint8 activations with one scale per tensor) misses the KL gate
#   (0.060-0.072 vs 0.05: the hidden states' outlier channels, Dettmers et al. 2022), and its full-range
#   int8 weights saturate in the VPMADDUBSW kernels of x86 CPUs without VNNI (2.3x the loss there);
# - 8-bit weights with float compute are the most exact but decode at a sixth of fp32's speed.
ACCURACY_LEVEL: dict[str, int | None] = {"int8": 4, "int4": None}
# Copied verbatim from the source directory: the runtime reads tokenizer.json (+ configs for BOS/EOS).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "added_tokens.json")
# Dropped from exports: tokenizer.json holds the same tokenizer, and a GGUF-converted model's
# tokenizer.model is the whole GGUF file (98 MB for SmolLM2-135M).
SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt")
_PROTOBUF_LIMIT = 2**31  # one ONNX protobuf cannot exceed 2 GB: larger models keep weights outside


# --------------------------------------------------------------------------------------- export


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                opset: int | None = None) -> Path:
    """Export an HF causal-LM directory to ONNX with a KV cache; return ``out_dir``.

    Refuses a directory without safetensors weights or ``tokenizer.json``, NaN/Inf weights, and an
    existing ``out_dir`` unless ``overwrite``; the graph must pass ``onnx.checker`` (full check).
    """
    src, out = Path(model_dir), Path(out_dir)
    _check_source(src)
    _check_target(out, src, overwrite)
    exporters = require("optimum.exporters.onnx", "export")
    t0 = time.perf_counter()
    with atomic_path(out) as tmp:
        with _quiet():
            try:
                exporters.main_export(
                    str(src), tmp, task=TASK, opset=opset, framework="pt", library_name="transformers",
                    local_files_only=True, trust_remote_code=False, do_validation=False,
                )
            except Exception as e:  # optimum raises ValueError/KeyError/RuntimeError for unsupported models
                raise ExportError(f"optimum-onnx could not export {src}: {e}") from e
        export_seconds = time.perf_counter() - t0
        _copy_source_files(src, tmp, TOKENIZER_FILES)  # optimum re-saves the tokenizer; keep the source's files
        _check_onnx(tmp / MODEL_FILE)
        _write_info(tmp, {
            "source": str(src.resolve()), "task": TASK, "format": "onnx", "quantization": "fp32",
            "opset": _opset(tmp / MODEL_FILE), "export_seconds": round(export_seconds, 3),
            "model_bytes": onnx_bytes(tmp), "versions": library_versions(),
        })
    return out


# onnxruntime-genai's model builder: which execution provider each quantisation is built for, and the
# options (its --extra_options) that select our defaults, chosen by benchmarks/onnx_fused.py on SmolLM2:
# int8 and int4 use int8 compute (accuracy_level 4: as exact as float compute here, and faster); int4 rounds
# with k-quant and keeps the LM head (the tied embedding, the most output-sensitive matrix) and llama.cpp's
# "mixed" set of sensitive matrices (first and last eighth of the layers, every third layer's qkv/v/down) at
# 8 bits, the only builder variant measured within the 4% bits-per-byte target. Its 4-bit weights are then
# re-quantised by GPTQ when the caller gives calibration text (export_model does: ExportConfig.int4_method).
FUSED_PROVIDER = {"fp32": "cpu", "int8": "cpu", "int4": "cpu", "fp16": "cuda"}
FUSED_OPTIONS: dict[str, dict[str, str]] = {
    "fp32": {}, "fp16": {},
    "int8": {"block_size": "32", "accuracy_level": "4"},
    "int4": {"block_size": "32", "accuracy_level": "4", "algo_config": "k_quant",
             "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8",
             "shared_embeddings": "false"},  # the builder cannot share an 8-bit head with a 4-bit embedding
}


def export_onnx_fused(model_dir: str | Path, out_dir: str | Path, quant: str = "fp32", *, overwrite: bool = False,
                      options: dict[str, Any] | None = None, gptq_texts: Sequence[str] | None = None,
                      gptq_tokens: int = CALIBRATION_TOKENS, log: Callable[[str], None] = print) -> Path:
    """Export an HF causal-LM directory to onnxruntime-genai's fused decoder graph; return ``out_dir``.

    The graph (onnxruntime-genai's model builder) has GroupQueryAttention with rotary embeddings
    inside, packed QKV, SkipSimplifiedLayerNormalization and, for int8/int4, MatMulNBits weights
    quantised by the builder (``FUSED_OPTIONS``; ``options`` overrides them: the builder's
    ``--extra_options``). Inputs and outputs are optimum's names (``input_ids``, ``attention_mask``,
    ``past_key_values.{i}.key/value`` -> ``logits``, ``present.*``), so :class:`OnnxBackend` runs it
    with plain onnxruntime; ``genai_config.json`` lets onnxruntime-genai run it too.

    ``gptq_texts`` (int4 only): calibration text; the builder's 4-bit weights are then re-quantised by
    GPTQ on ``gptq_tokens`` tokens of it (:func:`edge_downscale.export.gptq.refit_int4`), its 8-bit ones kept.
    """
    if quant not in FUSED_PROVIDER:
        raise ExportError(f"unknown ONNX quantisation {quant!r}; available: {', '.join(FUSED_PROVIDER)}")
    src, out = Path(model_dir), Path(out_dir)
    _check_source(src)
    _check_target(out, src, overwrite)
    require("onnxruntime_genai", "export")
    extra = {**FUSED_OPTIONS[quant], **{k: str(v) for k, v in (options or {}).items()}}
    t0 = time.perf_counter()
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="genai-builder-") as scratch:
        tmp.mkdir()
        cmd = [sys.executable, "-m", "edge_downscale.export._genai_builder", "-i", str(src), "-o", str(tmp),
               "-p", quant, "-e", FUSED_PROVIDER[quant], "-c", scratch]
        if extra:
            cmd += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        builder_log = Path(scratch) / "builder.log"
        with builder_log.open("w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
        if rc != 0 or not (tmp / MODEL_FILE).is_file():
            tail = builder_log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ExportError(f"onnxruntime-genai's model builder could not export {src} ({quant}): {tail[0]}")
        refit = None
        if gptq_texts is not None and quant == "int4":
            from .gptq import refit_int4

            refit = refit_int4(tmp, src, gptq_texts, tokens=gptq_tokens, log=log)
        export_seconds = time.perf_counter() - t0
        _copy_source_files(src, tmp, ("config.json", *TOKENIZER_FILES))  # the runtime reads the source's files
        _check_session(tmp / MODEL_FILE)
        _write_info(tmp, {
            "source": str(src.resolve()), "task": TASK, "format": "onnx", "quantization": quant, "graph": "fused",
            "builder": "onnxruntime-genai", "execution_provider": FUSED_PROVIDER[quant], "builder_options": extra,
            "int4_refit": refit,
            "opset": _opset(tmp / MODEL_FILE), "export_seconds": round(export_seconds, 3),
            "model_bytes": onnx_bytes(tmp), "versions": library_versions(),
        })
    return out


def _copy_source_files(src: Path, out: Path, names) -> None:
    """The source's own copies of ``names`` into ``out``; the redundant slow-tokenizer files removed."""
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    for name in SLOW_TOKENIZER_FILES:
        (out / name).unlink(missing_ok=True)


def _check_source(src: Path) -> None:
    if not src.is_dir():
        raise ExportError(f"{src} is not a directory: pass an HF model directory (config.json + *.safetensors)")
    if not (src / "config.json").is_file() or not any(src.glob("*.safetensors")):
        raise ExportError(f"{src} is not an HF model directory: it needs config.json and *.safetensors weights "
                          "(save with model.save_pretrained(dir, safe_serialization=True))")
    if not (src / "tokenizer.json").is_file():
        raise ExportError(f"{src} has no tokenizer.json: the ONNX runtime needs a fast tokenizer next to the model "
                          "(save one with AutoTokenizer.from_pretrained(...).save_pretrained(dir))")
    _check_finite(src)


def _check_finite(src: Path) -> None:
    """Refuse NaN/Inf weights: they export fine and then score garbage."""
    torch = require("torch", "compress")
    safetensors = require("safetensors", "compress")
    for file in sorted(src.glob("*.safetensors")):
        with safetensors.safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ExportError(f"{file.name}: tensor {key} has NaN/Inf values; the model is broken "
                                      "(re-run the stage that wrote it) and will not be exported")


def _check_target(out: Path, src: Path, overwrite: bool) -> None:
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ExportError(f"{out} is inside the source {src}: write the export to another directory")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory: choose another output path")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists: pass overwrite=True (--overwrite) to replace it")


def _check_onnx(path: Path) -> None:
    onnx = require("onnx", "export")
    if not path.is_file():
        raise ExportError(f"the exporter wrote no {path.name}; report this with the source model's config.json")
    try:  # the path form handles external data (> 2 GB)
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape-inference errors
        raise ExportError(f"{path} fails onnx.checker (full_check): {e}") from e


def _check_session(path: Path) -> None:
    """A fused graph is checked by the one program that runs it: onnx.checker knows neither onnxruntime's
    contrib ops in the default domain (SimplifiedLayerNormalization) nor a graph whose shared quantised
    embedding is defined after its first use, both of which onnxruntime accepts."""
    ort = require("onnxruntime", "export")
    if not path.is_file():
        raise ExportError(f"the exporter wrote no {path.name}; report this with the source model's config.json")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises Fail / InvalidGraph / NotImplemented
        raise ExportError(f"{path} does not load in onnxruntime: {e}") from e


# ------------------------------------------------------------------------------------- quantize


def quantize_onnx(src_dir: str | Path, dst_dir: str | Path, quant: str, *, block_size: int = 32,
                  symmetric: bool = True, accuracy_level: int | None = None, keep_float: Sequence[str] = (),
                  overwrite: bool = False) -> Path:
    """Quantise an :func:`export_onnx` directory to ``quant`` (one of ``ONNX_QUANTS``); return ``dst_dir``.

    int8/int4: ``block_size`` (a power of two >= 16) weights share one scale; ``symmetric`` (no zero
    point); ``accuracy_level`` onnxruntime's MatMulNBits compute type (default per type: ``ACCURACY_LEVEL``);
    ``keep_float``: substrings of MatMul node names left in float.
    Config and tokenizer files are copied; ``export_info.json`` records the options (``quant_options``).
    """
    if quant not in ONNX_QUANTS:
        raise ExportError(f"unknown ONNX quantisation {quant!r}; available: {', '.join(ONNX_QUANTS)}")
    if quant in NBITS and (block_size < 16 or block_size & (block_size - 1)):
        raise ExportError(f"{quant} block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")
    src, dst = Path(src_dir), Path(dst_dir)
    if not (src / MODEL_FILE).is_file():
        raise ExportError(f"{src} has no {MODEL_FILE}: export the model first with export_onnx")
    _check_target(dst, src, overwrite)
    kwargs = {} if quant not in NBITS else {
        "bits": NBITS[quant], "block_size": block_size, "symmetric": symmetric, "keep_float": tuple(keep_float),
        "accuracy_level": ACCURACY_LEVEL[quant] if accuracy_level is None else accuracy_level}
    t0 = time.perf_counter()
    with atomic_path(dst) as tmp:
        tmp.mkdir()
        for f in src.iterdir():  # config, tokenizer, export_info.json; not the weights
            if f.is_file() and not f.name.startswith(MODEL_FILE):
                shutil.copy2(f, tmp / f.name)
        with _quiet():
            try:
                large = onnx_bytes(src) >= _PROTOBUF_LIMIT
                kept = _QUANTIZERS[quant](src / MODEL_FILE, tmp / MODEL_FILE, large=large, **kwargs)
            except EdgeDownscaleError:
                raise
            except Exception as e:  # onnxruntime's quantisers raise plain exceptions
                raise ExportError(f"onnxruntime could not quantise {src} to {quant}: {e}") from e
        seconds = time.perf_counter() - t0
        _check_onnx(tmp / MODEL_FILE)
        info = _read_info(src)
        info.update({
            "quantization": quant, "quant_options": kwargs, "float_matmuls_kept": kept,
            "quantized_from": str(src.resolve()), "quantize_seconds": round(seconds, 3), "model_bytes": onnx_bytes(tmp),
            "versions": library_versions(),
        })
        _write_info(tmp, info)
    return dst


def float_matmuls(model, keep_float: Sequence[str]) -> list[str]:
    """MatMul nodes whose name contains one of ``keep_float``: they stay in float."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(k in n.name for k in keep_float)]


def _quantize_nbits(src: Path, dst: Path, *, large: bool, bits: int, block_size: int, symmetric: bool,
                    accuracy_level: int | None, keep_float: Sequence[str]) -> int:
    onnx = require("onnx", "export")
    require("onnx_ir", "export")  # onnxruntime's MatMulNBits quantiser imports it; onnxruntime does not declare it
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # (inside _quiet: basicConfig)

    model = onnx.load(str(src))
    exclude = float_matmuls(model, keep_float)
    extra = {} if accuracy_level is None else {"accuracy_level": accuracy_level}
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     nodes_to_exclude=exclude, quant_format=QuantFormat.QOperator,
                                     op_types_to_quantize=("MatMul",), **extra)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)
    return len(exclude)


def _quantize_fp16(src: Path, dst: Path, *, large: bool) -> int:
    onnx = require("onnx", "export")
    try:
        from onnxruntime.transformers import float16
    except ImportError as e:
        raise ExportError("fp16 conversion needs onnxruntime's transformers tools "
                          "(onnxruntime.transformers.float16): pip install 'onnxruntime>=1.20'") from e
    model = onnx.load(str(src))
    # keep logits float32: log-probabilities of a 50k vocabulary lose ~1e-3 in fp16 rounding alone
    model16 = float16.convert_float_to_float16(model, keep_io_types=["logits"], disable_shape_infer=large)
    onnx.save(model16, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
              location=f"{dst.name}_data")
    return 0


_QUANTIZERS: dict[str, Callable[..., int]] = {"int8": _quantize_nbits, "int4": _quantize_nbits, "fp16": _quantize_fp16}


# ------------------------------------------------------------------------------------- helpers


def onnx_bytes(model_dir: str | Path) -> int:
    """Bytes of the model proper: ``model.onnx`` plus its external data files."""
    return sum(f.stat().st_size for f in Path(model_dir).iterdir() if f.is_file() and f.name.startswith(MODEL_FILE))


def _opset(path: Path) -> int | None:
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _read_info(model_dir: Path) -> dict[str, Any]:
    path = model_dir / INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_info(model_dir: Path, info: dict[str, Any]) -> None:
    info = {**info, "edge_downscale_version": __version__}
    (model_dir / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _quiet():
    """Silence exporter/quantiser chatter (tracer warnings, INFO logs) for one block.

    onnxruntime's quantisers log on the root logger and one calls ``logging.basicConfig(level=INFO)``
    at import; a temporary handler on the root logger makes that a no-op, so the app's logging is untouched.
    """
    with contextlib.suppress(ImportError):  # optimum sets its logger's level on first use: make that happen now
        from optimum.utils import logging as optimum_logging

        optimum_logging.get_logger()
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    loggers = [root] + [logging.getLogger(n) for n in ("optimum", "onnxruntime", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if guard is not None:
            root.addHandler(guard)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            if guard is not None:
                root.removeHandler(guard)
