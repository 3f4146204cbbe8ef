"""Held-out evaluation data as files: what a bundle carries so a device can judge it without torch.

One JSON Lines file per domain, ``eval/<domain>.jsonl``, one object per line::

    {"type": "text", "text": "..."}                                   # scored for bits-per-byte
    {"type": "mc", "context": "...", "choices": ["...", ...], "answer": 0}   # multiple choice

Reading returns ``{domain: (texts, items)}`` in file order; a malformed line is an EvalError that
names the file and line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from .._io import atomic_path
from ..errors import EvalError
from .mc import MCItem

EVAL_DIR = "eval"
EVAL_SUFFIX = ".jsonl"


def write_eval_file(path: str | os.PathLike, texts: Sequence[str], items: Sequence[MCItem]) -> Path:
    """Write one domain's held-out texts and multiple-choice items (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for text in texts:
                f.write(json.dumps({"type": "text", "text": text}, ensure_ascii=False) + "\n")
            for item in items:
                f.write(json.dumps({"type": "mc", "context": item.context, "choices": list(item.choices),
                                    "answer": item.answer}, ensure_ascii=False) + "\n")
    return path


def read_eval_file(path: str | os.PathLike) -> tuple[list[str], list[MCItem]]:
    """(texts, items) of one ``eval/<domain>.jsonl`` file."""
    path = Path(path)
    texts: list[str] = []
    items: list[MCItem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: unreadable ({e})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind = obj["type"]
            if kind == "text" and isinstance(obj["text"], str):
                texts.append(obj["text"])
            elif (kind == "mc" and isinstance(obj["context"], str) and len(obj["choices"]) >= 2
                  and isinstance(obj["answer"], int) and 0 <= obj["answer"] < len(obj["choices"])):
                items.append(MCItem(obj["context"], [str(c) for c in obj["choices"]], obj["answer"]))
            else:
                raise ValueError(f"unknown or ill-formed record of type {kind!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise EvalError(f"{path}:{n}: not an eval record ({e}); rebuild the bundle") from None
    return texts, items


def write_eval_data(directory: str | os.PathLike, data: Mapping[str, tuple[Sequence[str], Sequence[MCItem]]]) -> dict[str, Path]:
    """``directory/<domain>.jsonl`` per domain; returns {domain: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {domain: write_eval_file(directory / f"{domain}{EVAL_SUFFIX}", texts, items)
            for domain, (texts, items) in data.items()}


def read_eval_data(directory: str | os.PathLike) -> dict[str, tuple[list[str], list[MCItem]]]:
    """{domain: (texts, items)} of every ``*.jsonl`` in ``directory`` (sorted by domain)."""
    directory = Path(directory)
    files = sorted(directory.glob(f"*{EVAL_SUFFIX}"))
    if not files:
        raise EvalError(f"{directory}: no held-out eval files (*{EVAL_SUFFIX}); build the bundle with `edge-downscale build`")
    return {f.name[: -len(EVAL_SUFFIX)]: read_eval_file(f) for f in files}
