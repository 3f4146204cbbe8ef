"""Corpora by name: resolve a demo domain or corpus directory, and draw held-out text for evaluation."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

from ..config import EvalConfig
from ..errors import ConfigError, EvalError
from .corpus import demo_corpus, load_corpus
from .sources import DEMO_DOMAINS


def resolve_corpus(name_or_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """The corpus directory of a demo domain name (built into the cache on first use) or a directory.

    A demo domain's name wins over a same-named directory (write ``./docs`` for the directory).
    """
    if isinstance(name_or_dir, str) and name_or_dir in DEMO_DOMAINS:
        return demo_corpus(name_or_dir, progress=progress)
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    raise ConfigError(
        f"unknown domain {str(name_or_dir)!r}: neither a corpus directory nor a demo domain; use a demo domain "
        f"({', '.join(DEMO_DOMAINS)}) or a directory written by `edge-downscale data build`"
    )


def heldout_texts(domain: str, config: EvalConfig) -> tuple[list[str], list[str]]:
    """(texts for bits-per-byte capped at ``max_bytes``, all split texts for multiple choice).

    Documents are visited in a seeded random order; each contributes at most an eighth of the budget
    (or 1/n of it when the split has n < 8 documents; cut at a line end) so one long file cannot
    dominate a domain's figure.
    """
    split = load_corpus(resolve_corpus(domain))[config.split]
    texts = [t for t in split["text"] if t]
    if not texts:
        raise EvalError(f"domain {domain!r}: the {config.split} split is empty")
    order = list(range(len(texts)))
    random.Random(f"{config.seed}:{domain}").shuffle(order)
    budget = config.max_bytes
    picked: list[str] = []
    per_doc = max(budget // min(8, len(texts)), 2000) if budget else None
    for i in order:
        text = texts[i]
        if budget is not None:
            if budget <= 0:
                break
            cap = min(per_doc, budget)
            if len(text.encode("utf-8")) > cap:
                text = text.encode("utf-8")[:cap].decode("utf-8", "ignore")
                nl = text.rfind("\n")
                text = text[: nl + 1] if nl > len(text) // 2 else text
            budget -= len(text.encode("utf-8"))
        picked.append(text)
    return picked, texts


def heldout_by_domain(domains: Sequence[str], config: EvalConfig | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """``{domain: heldout_texts(domain, config)}`` in order: the input of :func:`edge_downscale.eval.evaluate`."""
    config = config or EvalConfig()
    return {domain: heldout_texts(domain, config) for domain in domains}
