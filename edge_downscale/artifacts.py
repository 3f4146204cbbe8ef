"""Finished artifacts: a directory whose ``model.json`` lists every file with its size and sha256.

Torch-free (the runtime checks bundles with it); :mod:`edge_downscale.export.manifest` writes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._io import sha256_file
from .errors import ExportError, ModelFormatError

MANIFEST = "model.json"
# format -> the model file an artifact of that format holds (tokenizer and configs sit beside it)
MODEL_FILES: dict[str, str] = {"gguf": "model.gguf", "onnx": "model.onnx"}


def artifact_format(artifact_dir: str | Path) -> str:
    """``gguf`` or ``onnx``: the format of the model file in ``artifact_dir``."""
    artifact_dir = Path(artifact_dir)
    for fmt, filename in MODEL_FILES.items():
        if (artifact_dir / filename).is_file():
            return fmt
    raise ModelFormatError(f"{artifact_dir}: neither {' nor '.join(MODEL_FILES.values())}; "
                           "pass a directory written by edge-downscale export")


def model_file(artifact_dir: str | Path, fmt: str | None = None) -> Path:
    """The model file of an artifact (``model.gguf`` / ``model.onnx``); ``fmt`` names it without looking."""
    return Path(artifact_dir) / MODEL_FILES[fmt or artifact_format(artifact_dir)]


def file_table(artifact_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(artifact_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(artifact_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}


def verify_manifest(artifact_dir: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; raise ExportError naming the first mismatch."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST
    if not path.exists():
        raise ExportError(f"{artifact_dir}: no {MANIFEST}; it is not a finished export (re-run edge-downscale export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{path}: unreadable manifest ({e}); re-export") from e
    for name, info in files:
        f = artifact_dir / name
        if not f.exists():
            raise ExportError(f"{artifact_dir}: {name} is missing; re-export")
        if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
            raise ExportError(f"{artifact_dir}: {name} does not match its manifest hash (modified or corrupt); re-export")
    return manifest
