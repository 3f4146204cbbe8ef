"""GGUF export: an HF Llama-family directory -> a llama.cpp GGUF (F32/F16), then llama.cpp's own quantiser.

    path = export_gguf("pruned/r0.30", "out/model-f32.gguf")
    quantize_gguf(path, "out/model-q4_k_m.gguf", "q4_k_m")
    gguf_bits_per_weight("out/model-q4_k_m.gguf")   # the real figure: K-quants fall back on rows not /256

What is architecture-specific is data (:data:`GGUF_ARCHITECTURES`): the gguf-py architecture, which
tensors carry the rotary un-permute, the hyper-parameter keys and the tensors every block must have.
Tensor names come from gguf-py's HF -> GGUF map; a tensor it does not know, or two tensors landing on
one name, stop the export. Weights are read from safetensors only (a small numpy reader: no torch).
Every file appears atomically (temp name, then rename).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .._io import atomic_path
from ..errors import require
from ..runtime.gguf_file import check_gguf
from .errors import ExportError

OUTTYPES = ("f32", "f16")


# ---------------------------------------------------------------------------------------------------
# Architectures (data)

def _llama_hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    """HF config.json -> the values llama.cpp's llama-family loaders read (defaults as transformers')."""
    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    return {
        "context_length": cfg["max_position_embeddings"],
        "embedding_length": cfg["hidden_size"],
        "block_count": cfg["num_hidden_layers"],
        "feed_forward_length": cfg["intermediate_size"],  # the pruned width for a pruned model
        "head_count": n_head,
        "head_count_kv": cfg.get("num_key_value_heads") or n_head,
        "rope_freq_base": float(cfg.get("rope_theta", 10000.0)),
        "rms_eps": float(cfg["rms_norm_eps"]),
        "vocab_size": cfg["vocab_size"],
        "rope_dimension_count": head_dim,
        "key_length": head_dim,
        "value_length": head_dim,
    }


@dataclasses.dataclass(frozen=True)
class GGUFArchitecture:
    """How one HF ``model_type`` becomes a GGUF: all of it data except the config reader."""

    gguf_arch: str  # member of gguf.MODEL_ARCH
    read_hparams: Callable[[dict[str, Any]], dict[str, Any]]
    hparams: tuple[tuple[str, str], ...]  # (GGUFWriter method, key of read_hparams' dict)
    permute: dict[str, str]  # gguf.MODEL_TENSOR member -> hparam giving its head count (rotary un-permute)
    required: tuple[str, ...]  # gguf.MODEL_TENSOR members every block must have
    required_global: tuple[str, ...] = ("TOKEN_EMBD", "OUTPUT_NORM")
    skip_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)  # buffers llama.cpp recomputes
    hidden_act: str = "silu"


_LLAMA_HPARAMS = (
    ("add_context_length", "context_length"),
    ("add_embedding_length", "embedding_length"),
    ("add_block_count", "block_count"),
    ("add_feed_forward_length", "feed_forward_length"),
    ("add_head_count", "head_count"),
    ("add_head_count_kv", "head_count_kv"),
    ("add_rope_freq_base", "rope_freq_base"),
    ("add_layer_norm_rms_eps", "rms_eps"),
    ("add_vocab_size", "vocab_size"),
    ("add_rope_dimension_count", "rope_dimension_count"),
    ("add_key_length", "key_length"),
    ("add_value_length", "value_length"),
)

GGUF_ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "llama": GGUFArchitecture(
        gguf_arch="LLAMA",
        read_hparams=_llama_hparams,
        hparams=_LLAMA_HPARAMS,
        # HF stores Q/K rows in the rotary "half-split" layout; llama.cpp's llama kernels want them
        # interleaved, as its converter writes them.
        permute={"ATTN_Q": "head_count", "ATTN_K": "head_count_kv"},
        required=("ATTN_NORM", "ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_OUT", "FFN_NORM", "FFN_GATE", "FFN_UP", "FFN_DOWN"),
    ),
}

# tokenizer.json pre-tokenizer -> llama.cpp's ``tokenizer.ggml.pre`` with the same splitting regex.
# Each entry lists the steps (a Sequence flattened) and the fields each step must have.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
BPE_PRE_TOKENIZERS: dict[str, tuple[dict[str, Any], ...]] = {
    "gpt-2": (_BYTE_LEVEL,),  # GPT-2's regex: what a plain byte-level BPE (the tiny test model) does
    "smollm": ({"type": "Digits", "individual_digits": True}, _BYTE_LEVEL),  # SmolLM / StarCoder-style
}


# ---------------------------------------------------------------------------------------------------
# Export

def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, *, outtype: str = "f32") -> Path:
    """Write ``model_dir`` (HF safetensors + config.json + tokenizer.json) as a GGUF at ``out_path``.

    ``outtype``: "f32", or "f16" (matrices in float16, norms stay float32 as llama.cpp expects).
    Quantise the result with :func:`quantize_gguf`.
    """
    gguf = require("gguf", "export")
    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise ExportError(f"unknown GGUF outtype {outtype!r}; choose one of: {', '.join(OUTTYPES)} "
                          "(quantise afterwards with quantize_gguf)")
    cfg = _read_config(model_dir)
    arch = _architecture(cfg, model_dir)
    hp = arch.read_hparams(cfg)
    if not (model_dir / "tokenizer.json").is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json; save the tokenizer next to the model "
                          "(tokenizer.save_pretrained(dir)) and export again")
    tokens, token_types, pre = _bpe_vocab(model_dir, hp["vocab_size"])
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=hp["vocab_size"])
    if not special.merges:
        raise ExportError(f"{model_dir}/tokenizer.json has no BPE merges; it cannot be a byte-level BPE")
    tensors = _gguf_tensors(model_dir, cfg, arch, hp, outtype)  # validated before any byte is written

    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_arch)])
        try:
            writer.add_name(model_dir.name)
            writer.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            for method, key in arch.hparams:
                getattr(writer, method)(hp[key])
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(pre)
            writer.add_token_list(tokens)
            writer.add_token_types(token_types)
            special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/pad/unk ids, add_bos, chat template
            if "bos" not in special.add_special_token:
                writer.add_add_bos_token(False)  # the HF tokenizer adds no BOS: say so explicitly
            writer.add_add_space_prefix(False)
            for name, array in tensors:
                writer.add_tensor(name, array)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out_path


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no config.json; pass an HF model directory (model.save_pretrained(dir))")
    return json.loads(path.read_text(encoding="utf-8"))


def _architecture(cfg: dict[str, Any], model_dir: Path) -> GGUFArchitecture:
    kind = cfg.get("model_type")
    arch = GGUF_ARCHITECTURES.get(kind)
    if arch is None:
        raise ExportError(f"{model_dir}: architecture {kind!r} cannot be exported to GGUF yet; "
                          f"supported: {', '.join(sorted(GGUF_ARCHITECTURES))}")
    if cfg.get("rope_scaling"):
        raise ExportError(f"{model_dir}: rope_scaling {cfg['rope_scaling']!r} is not supported by the GGUF exporter; "
                          "export a model without rope scaling")
    act = cfg.get("hidden_act", arch.hidden_act)
    if act != arch.hidden_act:
        raise ExportError(f"{model_dir}: hidden_act {act!r} is not what llama.cpp's {kind} uses ({arch.hidden_act!r})")
    return arch


# ---------------------------------------------------------------------------------------------------
# Tensors

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor of one .safetensors file; memory-mapped, bf16 widened exactly."""
    with open(path, "rb") as f:
        (n_header,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n_header))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n_header)
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ExportError(f"{path}: tensor {name} has dtype {meta['dtype']}; only float weights can be exported")
        start, end = meta["data_offsets"]
        if end > data.size:
            raise ExportError(f"{path}: truncated (tensor {name} ends past the file); save the model again")
        array = data[start:end].view(dtype).reshape(meta["shape"])
        if meta["dtype"] == "BF16":  # bf16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        yield name, array.astype(np.float32, copy=False)


def _hf_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no *.safetensors weights; save with model.save_pretrained(dir, "
                          "safe_serialization=True)")
    for path in files:
        yield from _read_safetensors(path)


def _unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo HF's rotary row order for one Q or K projection: (n_head*d, in) -> same shape.

    HF keeps the two rotary halves of each head apart (rows [x0..x_{d/2}, y0..y_{d/2}]); llama.cpp
    rotates adjacent pairs, so rows go back to [x0, y0, x1, y1, ...] within every head.
    """
    d_half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, d_half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tensors(model_dir: Path, cfg: dict[str, Any], arch: GGUFArchitecture, hp: dict[str, Any],
                  outtype: str) -> list[tuple[str, np.ndarray]]:
    """Map, check and convert every weight: [(gguf name, array in its output dtype)], HF shapes kept."""
    gguf = require("gguf", "export")
    n_blocks = hp["block_count"]
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_arch), n_blocks)
    tied = bool(cfg.get("tie_word_embeddings", False))
    out: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for hf_name, array in _hf_tensors(model_dir):
        if hf_name.endswith(arch.skip_suffixes):
            continue
        mapped = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ExportError(f"{model_dir}: tensor {hf_name!r} has no GGUF name in llama.cpp's "
                              f"{cfg.get('model_type')} layout; export a plain {cfg.get('model_type')} checkpoint "
                              "(merge adapters, drop extra modules)")
        kind, name = mapped
        if kind.name == "OUTPUT" and tied:
            continue  # tied: llama.cpp reuses token_embd for the output projection
        if name in sources:
            raise ExportError(f"{model_dir}: tensors {sources[name]!r} and {hf_name!r} both map to {name!r}")
        if not np.isfinite(array).all():
            raise ExportError(f"{model_dir}: tensor {hf_name!r} has NaN/Inf values; fix or re-train the model "
                              "before exporting")
        if kind.name in arch.permute:
            array = _unpermute_rotary(array, hp[arch.permute[kind.name]])
        if outtype == "f16" and array.ndim >= 2:
            array = array.astype(np.float16)
            if not np.isfinite(array).all():
                raise ExportError(f"{model_dir}: tensor {hf_name!r} overflows float16 (|w| > 65504); "
                                  "export with outtype='f32'")
        sources[name] = hf_name
        out[name] = array
    _check_complete(model_dir, gguf, arch, n_blocks, out, tied)
    return list(out.items())


def _check_complete(model_dir: Path, gguf, arch: GGUFArchitecture, n_blocks: int, out: dict[str, np.ndarray],
                    tied: bool) -> None:
    """Every tensor llama.cpp requires is there (a missing one fails inside llama.cpp, less clearly).

    An untied model must bring its lm_head: without output.weight llama.cpp would silently reuse token_embd.
    """
    globals_ = arch.required_global + (() if tied else ("OUTPUT",))
    want = [gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, t)] + ".weight" for t in globals_]
    want += [gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, t)].format(bid=b) + ".weight"
             for b in range(n_blocks) for t in arch.required]
    missing = [n for n in want if n not in out]
    if missing:
        raise ExportError(f"{model_dir}: missing tensors {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}; the checkpoint is incomplete")


# ---------------------------------------------------------------------------------------------------
# Tokenizer

def _bpe_vocab(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int], str]:
    """tokenizer.json -> (tokens, token types, llama.cpp pre-tokenizer name), padded to ``n_vocab``."""
    gguf = require("gguf", "export")
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok.get("model") or {}
    where = model_dir / "tokenizer.json"
    if model.get("type") != "BPE":
        raise ExportError(f"{where}: a {model.get('type')!r} tokenizer; the GGUF exporter handles byte-level BPE only")
    if model.get("ignore_merges"):
        raise ExportError(f"{where}: ignore_merges=true (Llama-3 style) is not supported by the GGUF exporter")
    norm = tok.get("normalizer")
    if norm and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        raise ExportError(f"{where}: has a normalizer; llama.cpp's byte-level BPE does not normalise text")
    pre = _pre_tokenizer_name(tok.get("pre_tokenizer"), where)

    tokens: list[str | None] = [None] * n_vocab
    types = [int(gguf.TokenType.NORMAL)] * n_vocab
    for text, i in model["vocab"].items():
        if i >= n_vocab:
            raise ExportError(f"{where}: token id {i} >= the model's vocab_size {n_vocab}")
        tokens[i] = text
    for added in tok.get("added_tokens", []):
        i = added["id"]
        if i >= n_vocab:
            raise ExportError(f"{where}: added token {added['content']!r} has id {i} >= vocab_size {n_vocab}")
        tokens[i] = added["content"]
        types[i] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    for i, t in enumerate(tokens):
        if t is None:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens[i] = f"[PAD{i}]"
            types[i] = int(gguf.TokenType.UNUSED)
    # A byte-level BPE has a symbol for every printable ASCII byte, tab and newline (a SentencePiece-style
    # BPE has none for the space byte). Rarer bytes may be missing (SmolLM2 lacks 21, e.g. 0x04, 0xF5-0xFF).
    byte_symbol = gguf.vocab.bytes_to_unicode()
    missing = [hex(b) for b in (0x09, 0x0A, *range(0x20, 0x7F)) if byte_symbol[b] not in model["vocab"]]
    if missing:
        raise ExportError(f"{where}: no byte-level symbol for bytes {', '.join(missing[:8])}; the GGUF exporter "
                          "handles byte-level BPE (GPT-2 style) tokenizers only")
    return tokens, types, pre  # type: ignore[return-value]


def _pre_tokenizer_name(pre: dict[str, Any] | None, where: Path) -> str:
    """The :data:`BPE_PRE_TOKENIZERS` entry whose steps match tokenizer.json's pre-tokenizer."""
    steps = (pre or {}).get("pretokenizers", []) if (pre or {}).get("type") == "Sequence" else [pre or {}]
    steps = [{"use_regex": True, **step} for step in steps]  # tokenizers' default when the field is absent
    for name, signature in BPE_PRE_TOKENIZERS.items():
        if len(steps) == len(signature) and all(
                all(step.get(k) == v for k, v in want.items()) for step, want in zip(steps, signature)):
            return name
    raise ExportError(f"{where}: pre-tokenizer {json.dumps(pre)} has no llama.cpp equivalent here; "
                      f"supported: {', '.join(BPE_PRE_TOKENIZERS)}")


# ---------------------------------------------------------------------------------------------------
# Quantisation (llama.cpp's own quantiser)

# name -> llama.h's llama_ftype (stable enum values; checked against llama_cpp at run time).
GGUF_QUANTS: dict[str, int] = {
    "F16": 1,
    "Q8_0": 7,
    "Q6_K": 18,
    "Q5_K_M": 17,
    "Q4_K_M": 15,
    "Q4_0": 2,
}


def quantize_gguf(src_path: str | os.PathLike, dst_path: str | os.PathLike, quant: str, *,
                  n_threads: int | None = None) -> Path:
    """Quantise an F32/F16 GGUF with ``llama_model_quantize`` to ``quant`` (case-insensitive, see GGUF_QUANTS).

    K-quants need rows divisible by 256; llama.cpp picks another type for other tensors, so report
    :func:`gguf_bits_per_weight` of the result, not the nominal figure.
    """
    key = str(quant).upper()
    if key not in GGUF_QUANTS:
        raise ExportError(f"unknown GGUF quant {quant!r}; choose one of: {', '.join(GGUF_QUANTS)}")
    src, dst = Path(src_path), Path(dst_path)
    check_gguf(src)  # llama.cpp aborts on a damaged file; fail in Python first
    llama_cpp = require("llama_cpp", "llama")
    ftype = GGUF_QUANTS[key]
    if getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{key}") != ftype:  # pragma: no cover - a changed llama.h
        raise ExportError(f"llama_cpp's LLAMA_FTYPE_MOSTLY_{key} changed; update GGUF_QUANTS")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads or os.cpu_count() or 1
    with atomic_path(dst) as tmp:
        log = tmp.parent / "llama.log"  # in atomic_path's temp dir: removed with it
        with _native_stderr_to(log), _llama_logger_level(logging.DEBUG):  # all of it, into the log
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            last = (log.read_text(errors="replace").strip().splitlines() or [""])[-1]
            said = last[last.rfind("failed"):] if "failed" in last else last[-200:]
            raise ExportError(f"llama.cpp could not quantise {src} to {key} (code {rc}: {said}); the source must "
                              "be an F32/F16 GGUF that llama.cpp loads (export_gguf writes one)")
        check_gguf(tmp)
    return dst


@contextlib.contextmanager
def _native_stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to ``path`` meanwhile: llama.cpp prints a line per fallback tensor there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as f:
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def _llama_logger_level(level: int) -> Iterator[None]:
    """llama-cpp-python's log callback prints what this logger's level lets through; restore it afterwards."""
    logger = logging.getLogger("llama-cpp-python")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def gguf_bits_per_weight(path: str | os.PathLike) -> float:
    """File size * 8 / number of weights: the real figure (metadata and fallback types included)."""
    info = check_gguf(path)
    return Path(path).stat().st_size * 8 / info.n_params
