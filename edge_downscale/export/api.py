"""``export_model``: one call from an HF directory (or a registered model) to gated, manifested artifacts.

    out/gguf-q4_k_m/model.gguf + model.json
    out/onnx-int8/model.onnx (+ tokenizer, config) + model.json

Every artifact is scored against the torch source on held-out text (parity gate, on by default)
and gets a manifest with the sha256 of every file. The whole output directory appears atomically.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_path
from ..errors import ConfigError
from .errors import ExportError
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


def _tokenizer_info(model_dir: Path) -> dict[str, Any]:
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text()) if (model_dir / "tokenizer_config.json").exists() else {}
    return {"bos_token": cfg.get("bos_token"), "eos_token": cfg.get("eos_token"),
            "chat_template": bool(cfg.get("chat_template")), "file": "tokenizer.json"}


def _artifact_backend(fmt: str, artifact: Path, n_ctx: int):
    if fmt == "gguf":
        from ..runtime.llamacpp import LlamaCppBackend

        return LlamaCppBackend(artifact / "model.gguf", n_ctx=n_ctx)
    from ..runtime.onnx import OnnxBackend

    return OnnxBackend(artifact)


def export_model(model: str | Path, out_dir: str | Path, *, format: str, quants: Sequence[str] | str,
                 verify: bool = True, allow_degraded: bool = False, domain: str = "docs", max_bytes: int = 6000,
                 overwrite: bool = False, log=print) -> list[dict[str, Any]]:
    """Export ``model`` to ``format`` at each quantisation; returns the manifests."""
    from ..config import EvalConfig
    from ..data import heldout_texts
    from ..models.torch_backend import TorchBackend

    names = parse_quants(format, quants)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists: pass --overwrite to replace it")
    src = source_directory(model)
    if not (src / "tokenizer.json").exists():
        raise ExportError(f"{src}: no tokenizer.json; save the tokenizer next to the model (tokenizer.save_pretrained)")
    config = json.loads((src / "config.json").read_text())
    n_ctx = 512
    source = texts = None
    if verify:
        texts, _ = heldout_texts(domain, EvalConfig(max_bytes=max_bytes))
        source = TorchBackend.from_ref(str(src), context_length=n_ctx)
    manifests = []
    with atomic_path(out_dir) as tmp:
        work = tmp / ".work"
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        if format == "gguf":
            from .gguf import export_gguf, quantize_gguf

            base = export_gguf(src, work / "model-f32.gguf", outtype="f32")
        else:
            from .onnx import export_onnx

            base = export_onnx(src, work / "onnx-fp32", validate=False)
        log(f"exported {format} in {time.perf_counter() - t0:.1f} s")
        for q in names:
            art = tmp / f"{format}-{q}"
            t0 = time.perf_counter()
            if format == "gguf":
                art.mkdir()
                if q == "f32":
                    shutil.copyfile(base, art / "model.gguf")
                else:
                    quantize_gguf(base, art / "model.gguf", q)
            else:
                from .onnx import quantize_onnx

                if q == "fp32":
                    shutil.copytree(base, art)
                else:
                    quantize_onnx(base, art, q)
            seconds = time.perf_counter() - t0
            parity = None
            if verify:
                with _artifact_backend(format, art, n_ctx) as exported:
                    result = check_parity(source, exported, texts, q)
                log(("  " if result.passed else "  FAILED ") + result.summary())
                parity = {**enforce(result, allow_degraded=allow_degraded).to_dict(), "domain": domain}
            manifests.append(write_manifest(
                art, format=format, quant=q, source_dir=src, context_length=config.get("max_position_embeddings"),
                tokenizer=_tokenizer_info(src), parity=parity, extra={"seconds": round(seconds, 2)}))
        shutil.rmtree(work)
    return manifests
