"""Finished artifacts: a directory whose ``model.json`` lists every file with its size and sha256.

Torch-free (the runtime checks bundles with it); :mod:`edge_downscale.export.manifest` writes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._io import sha256_file
from .errors import ExportError

MANIFEST = "model.json"


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
