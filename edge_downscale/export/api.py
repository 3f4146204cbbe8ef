"""``export_model``: one call from an HF directory (or a registered model) to gated, manifested artifacts.

    out/gguf-q4_k_m/model.gguf + model.json
    out/onnx-int8/model.onnx (+ tokenizer, config) + model.json

Every artifact is scored against the torch source on held-out text (parity gate, on by default)
and gets a manifest with the sha256 of every file. The whole output directory appears atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .._io import atomic_path
from ..artifacts import MODEL_FILES
from ..config import EvalConfig, StageConfig, check, check_int
from ..errors import ConfigError
from ..runtime.base import open_artifact
from .errors import ExportError
from .gptq import CALIBRATION_TOKENS
from .manifest import write_manifest
from .parity import check_parity, enforce

EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    "gguf": ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"),
    "onnx": ("fp32", "int8", "int4", "fp16"),
}


def source_directory(model: str | Path) -> Path:
    """An HF directory for ``model``: a path as is, or a registered/GGUF model's dequantised cache."""
    from ..models import resolve
    from ..models.loader import gguf_hf_dir, load_torch

    ref = resolve(model)
    if ref.format == "hf":
        return ref.path
    if ref.format == "gguf":
        hf_dir = gguf_hf_dir(ref.path)
        if not (hf_dir / "config.json").exists():
            load_torch(ref)  # dequantises once into the cache
        return hf_dir
    raise ExportError(f"{model}: an {ref.format} model cannot be re-exported; give its HF source directory")


def _gguf_maker(src: Path, work: Path, config: "ExportConfig", log):
    """GGUF: convert once to f32, then quantise each type from it."""
    from .gguf import export_gguf, quantize_gguf

    base = export_gguf(src, work / "model-f32.gguf", outtype="f32")

    def make(quant: str, art: Path) -> None:
        art.mkdir()
        if quant == "f32":
            shutil.copyfile(base, art / MODEL_FILES["gguf"])
        else:
            quantize_gguf(base, art / MODEL_FILES["gguf"], quant)
    return make


def _onnx_optimum_maker(src: Path, work: Path, config: "ExportConfig", log):
    """ONNX, optimum's unfused graph: export fp32 once, then quantise it with onnxruntime."""
    from .onnx import export_onnx, quantize_onnx

    base = export_onnx(src, work / "onnx-fp32")
    return lambda quant, art: shutil.copytree(base, art) if quant == "fp32" else quantize_onnx(base, art, quant)


def _onnx_fused_maker(src: Path, work: Path, config: "ExportConfig", log):
    """ONNX, onnxruntime-genai's fused graph: the builder writes (and quantises) each artifact from the source;
    int4 weights are then re-quantised by GPTQ on the calibration corpus's train split (``int4_method``)."""
    from .onnx import export_onnx_fused

    texts = calibration_texts(config) if config.int4_method == "gptq" and "int4" in config.quants else None
    return lambda quant, art: export_onnx_fused(src, art, quant, gptq_texts=texts,
                                                gptq_tokens=config.calibration_tokens, log=log)


def calibration_texts(config: "ExportConfig") -> list[str]:
    """GPTQ's calibration text: the train split of ``config.calibration`` (else ``config.domain``), enough
    of it for ``calibration_tokens`` tokens."""
    from ..data import resolve_corpus
    from ..data.corpus import iter_texts

    corpus = resolve_corpus(config.calibration or config.domain, progress=False)
    return list(iter_texts(corpus, "train", max_bytes=config.calibration_tokens * CALIBRATION_BYTES_PER_TOKEN))


# (format, ONNX graph) -> a function (source dir, work dir, config, log) -> make(quant, artifact dir)
_MAKERS = {("gguf", None): _gguf_maker, ("onnx", "optimum"): _onnx_optimum_maker, ("onnx", "fused"): _onnx_fused_maker}
ONNX_GRAPHS = ("fused", "optimum")
INT4_METHODS = ("gptq", "k_quant")  # fused int4: GPTQ over the builder's layout, or the builder's own rounding
CALIBRATION_BYTES_PER_TOKEN = 8  # text read per calibration token wanted (BPE averages 3-5 bytes a token)


def parse_quants(fmt: str, quants: Sequence[str] | str) -> list[str]:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; available: {', '.join(EXPORT_FORMATS)}")
    names = [q.strip().lower() for q in (quants.split(",") if isinstance(quants, str) else quants) if q.strip()]
    if not names:
        raise ConfigError(f"give at least one quantisation; for {fmt}: {', '.join(EXPORT_FORMATS[fmt])}")
    bad = [q for q in names if q not in EXPORT_FORMATS[fmt]]
    if bad:
        raise ConfigError(f"unknown {fmt} quantisation {', '.join(bad)}; available: {', '.join(EXPORT_FORMATS[fmt])}")
    return names


@dataclasses.dataclass
class ExportConfig(StageConfig):
    """Where and how to export: ``out_dir/<format>-<quant>/`` per quantisation in ``quants``.

    ``onnx_graph`` (ONNX only): ``fused``, onnxruntime-genai's decoder graph (GroupQueryAttention,
    fused rotary embeddings and norms, MatMulNBits weights), or ``optimum``, optimum-onnx's op-by-op graph.
    ``verify``: score every artifact against the torch source on ``max_bytes`` of ``domain``'s
    held-out text (the parity gate); ``allow_degraded`` keeps an artifact that misses its gate (the
    numbers are still recorded). ``overwrite`` replaces an existing ``out_dir``.
    ``int4_method`` (fused ONNX int4): ``gptq`` re-quantises the 4-bit weights by GPTQ on
    ``calibration_tokens`` tokens of the ``calibration`` corpus's train split (default: ``domain``'s,
    disjoint from the held-out text the gate scores); ``k_quant`` keeps the model builder's rounding.
    """

    stage: ClassVar[str] = "export"
    out_dir: str = ""
    format: str = "gguf"
    quants: tuple[str, ...] = ()
    onnx_graph: str = "fused"
    verify: bool = True
    allow_degraded: bool = False
    domain: str = "docs"
    max_bytes: int = 6000
    overwrite: bool = False
    int4_method: str = "gptq"
    calibration: str = ""
    calibration_tokens: int = CALIBRATION_TOKENS

    def validate(self) -> None:
        check(isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir) != "", "out_dir must be a directory path")
        self.out_dir = str(self.out_dir)
        self.quants = tuple(parse_quants(self.format, self.quants))
        check(self.onnx_graph in ONNX_GRAPHS, f"unknown onnx_graph {self.onnx_graph!r}; available: {', '.join(ONNX_GRAPHS)}")
        for name in ("verify", "allow_degraded", "overwrite"):
            check(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        check(isinstance(self.domain, str) and self.domain != "", "domain must be a demo domain or a corpus directory")
        check_int(self, "max_bytes", minimum=1)
        check(self.int4_method in INT4_METHODS, f"unknown int4_method {self.int4_method!r}; available: {', '.join(INT4_METHODS)}")
        check(isinstance(self.calibration, str), "calibration must be a demo domain or a corpus directory ('' = domain)")
        check_int(self, "calibration_tokens", minimum=64)


def _tokenizer_info(model_dir: Path) -> dict[str, Any]:
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text()) if (model_dir / "tokenizer_config.json").exists() else {}
    return {"bos_token": cfg.get("bos_token"), "eos_token": cfg.get("eos_token"),
            "chat_template": bool(cfg.get("chat_template")), "file": "tokenizer.json"}


def export_model(model: str | Path, config: ExportConfig, *, log=print) -> list[dict[str, Any]]:
    """Export ``model`` as ``config`` says, one gated artifact per quantisation; returns the manifests."""
    from ..data import heldout_texts
    from ..models.torch_backend import TorchBackend

    fmt = config.format
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not config.overwrite:
        raise ExportError(f"{out_dir} already exists: pass --overwrite to replace it")
    src = source_directory(model)
    if not (src / "tokenizer.json").exists():
        raise ExportError(f"{src}: no tokenizer.json; save the tokenizer next to the model (tokenizer.save_pretrained)")
    model_config = json.loads((src / "config.json").read_text())
    n_ctx = 512
    source = texts = None
    if config.verify:
        texts, _ = heldout_texts(config.domain, EvalConfig(max_bytes=config.max_bytes))
        source = TorchBackend.from_ref(str(src), context_length=n_ctx)
    manifests = []
    with atomic_path(out_dir) as tmp:
        work = tmp / ".work"
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        make = _MAKERS[fmt, config.onnx_graph if fmt == "onnx" else None](src, work, config, log)
        log(f"prepared the {fmt} export in {time.perf_counter() - t0:.1f} s")
        for q in config.quants:
            art = tmp / f"{fmt}-{q}"
            t0 = time.perf_counter()
            make(q, art)
            seconds = time.perf_counter() - t0
            parity = None
            if config.verify:
                with open_artifact(art, **({"n_ctx": n_ctx} if fmt == "gguf" else {})) as exported:
                    result = check_parity(source, exported, texts, q)
                log(("  " if result.passed else "  FAILED ") + result.summary())
                parity = {**enforce(result, allow_degraded=config.allow_degraded).to_dict(), "domain": config.domain}
            manifests.append(write_manifest(
                art, format=fmt, quant=q, source_dir=src, context_length=model_config.get("max_position_embeddings"),
                tokenizer=_tokenizer_info(src), parity=parity,
                extra={"seconds": round(seconds, 2), **({"onnx_graph": config.onnx_graph} if fmt == "onnx" else {}),
                       **({"int4_method": config.int4_method} if (fmt, q, config.onnx_graph) == ("onnx", "int4", "fused")
                          else {})}))
        shutil.rmtree(work)
    return manifests
