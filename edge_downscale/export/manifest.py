"""``model.json`` next to every exported artifact: what it is, where it came from, how it scored.

Written last and atomically, so a directory with a manifest is a finished export; every file's
sha256 is recorded and :func:`verify_manifest` checks them before use.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

from .._env import library_versions
from .._io import sha256_file, write_json_atomic
from ..artifacts import MANIFEST, file_table, verify_manifest  # noqa: F401 (re-exported)


def source_hash(model_dir: str | Path) -> str:
    """sha256 over (name, sha256) of the source directory's weight and config files, sorted by name."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and (path.suffix in (".safetensors", ".gguf") or path.name == "config.json"):
            h.update(path.name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def write_manifest(artifact_dir: str | Path, *, format: str, quant: str, source_dir: str | Path,
                   context_length: int | None, tokenizer: dict[str, Any], parity: dict[str, Any] | None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    artifact_dir = Path(artifact_dir)
    files = file_table(artifact_dir)
    manifest = {
        "format": format, "quantization": quant, "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "source": {"path": str(source_dir), "sha256": source_hash(source_dir)},
        "tokenizer": tokenizer, "context_length": context_length, "parity": parity,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(), **(extra or {}),
    }
    write_json_atomic(artifact_dir / MANIFEST, manifest)
    return manifest
