"""``quality``: reference-model perplexity pruning; keep the ``low``, ``middle`` or ``high`` band.

Marion et al. 2023 ("When less is more"); Ankner et al. 2024 ("Perplexed by perplexity": a *small*
reference model's perplexity is a useful signal). Score: bits-per-byte of the first ``max_tokens``
tokens under the reference model.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Iterable

import numpy as np

from ...config import StageConfig, check, check_int
from .reference import ReferenceScores, reference_scores
from .selection import KEPT, Selection, quantiles


BANDS = ("low", "middle", "high")


@dataclasses.dataclass
class QualityConfig(StageConfig):
    """Perplexity band under a reference model.

    ``band``: which perplexities to keep, ``low`` (most predictable), ``middle`` (Marion et al.'s
    best band for their setting) or ``high``. ``max_tokens``: tokens scored per document (its start).
    """

    stage: ClassVar[str] = "prune.quality"
    band: str = "middle"
    max_tokens: int = 512
    batch_size: int = 4

    def validate(self) -> None:
        check(self.band in BANDS, f"band must be one of {', '.join(BANDS)}, got {self.band!r}")
        check_int(self, "max_tokens", 8)
        check_int(self, "batch_size", 1)


def band_indices(scores: np.ndarray, n_keep: int, band: str) -> np.ndarray:
    """Indices of the ``n_keep`` finite scores in the low/middle/high band (ties: earlier first)."""
    finite = np.flatnonzero(np.isfinite(scores))
    order = finite[np.argsort(scores[finite], kind="stable")]  # ascending
    n_keep = min(n_keep, len(order))
    start = {"low": 0, "middle": (len(order) - n_keep) // 2, "high": len(order) - n_keep}[band]
    return order[start:start + n_keep]


def quality_select(texts: Iterable[str], reference, n_keep: int | None = None,
                   config: QualityConfig | None = None, *, scores: ReferenceScores | None = None,
                   progress: bool = False) -> Selection:
    """Keep ``n_keep`` documents whose reference bits-per-byte lies in ``config.band``.

    Score: bits-per-byte (NaN: unscorable, dropped). ``scores`` reuses an earlier reference pass.
    ``n_keep=None`` keeps every scorable document.
    """
    config = config or QualityConfig()
    if scores is None:
        scores = reference_scores(reference, texts, max_tokens=config.max_tokens, batch_size=config.batch_size,
                                  progress=progress, desc="quality")
    n = len(scores.bpb)
    sel = Selection("quality", np.zeros(n, dtype=bool), ["perplexity-band"] * n, scores.bpb.copy())
    for i in np.flatnonzero(~np.isfinite(scores.bpb)):
        sel.reason[i] = "unscorable"
    n_keep = n if n_keep is None else n_keep
    for i in band_indices(scores.bpb, n_keep, config.band):
        sel.keep[i], sel.reason[i] = True, KEPT
    finite = scores.bpb[np.isfinite(scores.bpb)]
    kept = scores.bpb[sel.keep]
    sel.stats = {"band": config.band, "unscorable": scores.unscorable,
                 "bpb_all": quantiles(finite), "bpb_kept": quantiles(kept),
                 "tokens_scored": int(scores.n_tokens.sum())}
    return sel
