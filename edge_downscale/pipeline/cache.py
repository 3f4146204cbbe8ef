"""The build's content-addressed work directory: one directory per finished task, keyed by its inputs.

``WORK/<kind>/<key>/`` holds a task's output and ``stage.json`` (what ran, from which inputs, how
long it took). A task directory appears only by rename, so one that exists is finished; training
tasks run in ``WORK/<kind>/<key>.partial/`` (the engine's checkpoints live there), which a rerun
resumes. The key is a sha256 over the task kind, its config and the keys of the tasks it reads, so
a changed setting reruns exactly the tasks downstream of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .._io import write_json_atomic
from ..errors import ConfigError

STAGE_FILE = "stage.json"
PARTIAL = ".partial"
KEY_CHARS = 16
CACHE_VERSION = 1  # bump when a stage's output format changes: every key changes with it


def task_key(kind: str, config: Any, inputs: list[str]) -> str:
    """sha256 of (kind, config as canonical JSON, input keys), shortened to KEY_CHARS hex digits."""
    payload = json.dumps({"v": CACHE_VERSION, "kind": kind, "config": config, "inputs": inputs},
                         sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_CHARS]


def source_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a file or directory's content cheaply: relative names, sizes and mtimes.

    Editing, adding or removing a file changes it; reading a corpus of thousands of files does not
    need hashing their bytes.
    """
    p = Path(path).expanduser().resolve()
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not p.is_dir():
        raise ConfigError(f"{path} does not exist")
    h = hashlib.sha256()
    n = 0
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n += 1
    return {"path": str(p), "files": n, "listing_sha256": h.hexdigest()}


class WorkDir:
    """The content-addressed store of a build's task outputs."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def partial(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}{PARTIAL}"

    def done(self, kind: str, key: str) -> dict[str, Any] | None:
        """The stage record of a finished task, or None."""
        f = self.path(kind, key) / STAGE_FILE
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except ValueError:
            return None

    def finish(self, kind: str, key: str, staging: Path, record: dict[str, Any]) -> Path:
        """Write ``stage.json`` into ``staging`` and rename it to the task's directory (the commit point)."""
        write_json_atomic(staging / STAGE_FILE, record)
        final = self.path(kind, key)
        if final.exists():  # a finished copy from an earlier, interrupted commit
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def has_partial(self, kind: str, key: str) -> bool:
        p = self.partial(kind, key)
        return p.is_dir() and any(p.iterdir())
