"""``dedup``: exact duplicates by sha256 of the normalised text (``build_corpus``'s hash); first copy kept.

The text is NFC-normalised, lower-cased and whitespace-collapsed before hashing.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Iterable

import numpy as np

from ...config import StageConfig
from ..corpus import exact_hash, normalised_words
from .selection import KEPT, Selection, progress_bar


@dataclasses.dataclass
class ExactDedupConfig(StageConfig):
    """Exact duplicates by the normalised-text hash (no options: the hash is ``build_corpus``'s)."""

    stage: ClassVar[str] = "prune.dedup"


def exact_dedup(texts: Iterable[str], config: ExactDedupConfig | None = None, *, progress: bool = False) -> Selection:
    """Drop every document whose normalised text hash was seen before (reason ``exact-duplicate``).

    Score: the index (within ``texts``) of the first copy, NaN for first copies.
    """
    config = config or ExactDedupConfig()
    first: dict[str, int] = {}
    reasons: list[str] = []
    scores: list[float] = []
    with progress_bar(None, "exact dedup", progress) as bar:
        for i, text in enumerate(texts):
            key = exact_hash(normalised_words(text))
            j = first.setdefault(key, i)
            reasons.append(KEPT if j == i else "exact-duplicate")
            scores.append(math.nan if j == i else float(j))
            bar.update()
    keep = np.array([r == KEPT for r in reasons], dtype=bool)
    return Selection("dedup", keep, reasons, np.array(scores, dtype=np.float64),
                     stats={"unique": len(first)})
