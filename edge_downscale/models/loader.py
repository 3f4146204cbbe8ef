"""Resolve a model reference (registered name or local path) and load it into torch.

Formats: a ``.gguf`` file (loaded by transformers' GGUF support, *dequantised* to float), an HF model
directory (safetensors only; no pickle, no remote code) and an exported ONNX directory (scored by
the ONNX backend, not by torch).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from .._io import atomic_path, cache_dir, sha256_file, write_json_atomic
from ..errors import ModelFormatError, require
from . import registry
from ..runtime.gguf_file import check_gguf


@dataclasses.dataclass
class ModelRef:
    """A resolved model: what it is and where its bytes are."""

    name: str
    format: str  # "gguf" | "hf" | "onnx"
    path: Path
    spec: registry.ModelSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "path": str(self.path),
                "registered": self.spec is not None}


def resolve(ref: str | os.PathLike, *, pull: bool = True) -> ModelRef:
    """Turn a name or a path into a :class:`ModelRef`; registered models are pulled if needed."""
    ref_str = str(ref)
    path = Path(ref_str).expanduser()
    if path.exists():
        return ModelRef(name=path.name, format=detect_format(path), path=path.resolve())
    spec = registry.get_spec(ref_str)  # raises UnknownModelError listing the known names
    artifact = registry.pull(ref_str) if pull else (registry.cached_path(ref_str) or
                                                   registry.model_dir(ref_str) / spec.filename)
    return ModelRef(name=spec.name, format=spec.format, path=artifact, spec=spec)


def detect_format(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise ModelFormatError(f"{path}: not a model (expected a .gguf file, an HF model directory or an ONNX export directory)")
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return "hf"
    if any(path.glob("*.onnx")):
        return "onnx"
    if (path / "config.json").exists() and any(path.glob("*.bin")):
        raise ModelFormatError(
            f"{path}: only pickle (.bin) weights found; edge-downscale loads safetensors only "
            "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
        )
    raise ModelFormatError(
        f"{path}: not a model directory (needs config.json + *.safetensors, or *.onnx)"
    )


def gguf_hf_dir(gguf_path: Path) -> Path:
    """Dequantising a GGUF takes ~15 s; keep the result as a safetensors HF dir keyed by file hash."""
    return cache_dir("hf-from-gguf") / sha256_file(gguf_path)[:24]


def load_torch(ref: str | os.PathLike | ModelRef, *, dtype: str = "float32", device: str = "cpu"):
    """Load a causal LM and its tokenizer into torch. Returns ``(model, tokenizer, info)``.

    ``info`` records the source format and, for GGUF, that the weights were dequantised.
    """
    torch = require("torch", "compress")
    transformers = require("transformers", "compress")
    m = ref if isinstance(ref, ModelRef) else resolve(ref)
    torch_dtype = getattr(torch, dtype)
    info: dict[str, Any] = {"name": m.name, "source_format": m.format, "path": str(m.path)}
    t0 = time.perf_counter()
    if m.format == "onnx":
        raise ModelFormatError(f"{m.path}: an ONNX export cannot be loaded into torch; use --backend onnx")
    if m.format == "gguf":
        ginfo = check_gguf(m.path)
        info.update({"dequantized": True, "gguf_file_type": ginfo.file_type,
                     "note": f"weights dequantised from GGUF {ginfo.file_type} to {dtype} by transformers"})
        hf_dir = gguf_hf_dir(m.path)
        if not (hf_dir / "config.json").exists():
            with atomic_path(hf_dir) as tmp:
                kw = dict(gguf_file=m.path.name, local_files_only=True, trust_remote_code=False)
                tok = transformers.AutoTokenizer.from_pretrained(str(m.path.parent), **kw)
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    str(m.path.parent), dtype=torch.float32, **kw)
                model.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
                write_json_atomic(tmp / "edge_downscale_source.json",
                                  {"gguf": str(m.path), "gguf_file_type": ginfo.file_type})
        load_dir = hf_dir
    else:
        load_dir = m.path
        if not (load_dir / "tokenizer.json").exists() and not (load_dir / "tokenizer_config.json").exists():
            raise ModelFormatError(f"{load_dir}: no tokenizer files (tokenizer.json); save the tokenizer next to the model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(load_dir), local_files_only=True, trust_remote_code=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(load_dir), dtype=torch_dtype, local_files_only=True, trust_remote_code=False,
        use_safetensors=True,
    )
    model.to(device).eval()
    info.update({
        "architecture": model.config.model_type,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": dtype, "device": device, "load_seconds": round(time.perf_counter() - t0, 2),
    })
    return model, tokenizer, info


def model_info(ref: str | os.PathLike) -> dict[str, Any]:
    """Describe a model without loading weights into torch (used by `models info`)."""
    m = resolve(ref, pull=False)
    out: dict[str, Any] = m.to_dict()
    if m.spec is not None:
        out.update({"description": m.spec.description, "architecture": m.spec.architecture,
                    "license": m.spec.license, "pulled": registry.cached_path(m.name) is not None,
                    "sha256": m.spec.sha256, "size": m.spec.size})
        if not out["pulled"]:
            return out
    if m.format == "gguf":
        g = check_gguf(m.path)
        out.update({"architecture": g.architecture, "gguf_version": g.version, "file_type": g.file_type,
                    "n_tensors": g.n_tensors, "n_params": g.n_params, "context_length": g.context_length,
                    "tensor_types": g.tensor_types, "size": m.path.stat().st_size,
                    "torch_loading": "transformers GGUF support (dequantised to float)"})
    elif m.format == "hf":
        cfg = json.loads((m.path / "config.json").read_text())
        out.update({k: cfg.get(k) for k in ("model_type", "hidden_size", "intermediate_size",
                                             "num_hidden_layers", "num_attention_heads",
                                             "num_key_value_heads", "vocab_size", "max_position_embeddings")})
        out["size"] = sum(p.stat().st_size for p in m.path.glob("*.safetensors"))
    else:
        out["files"] = sorted(p.name for p in m.path.iterdir())
    return out
