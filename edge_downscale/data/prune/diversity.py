"""``diversity``: SemDeDup (Abbas et al. 2023) on reference-model embeddings.

Embed (the reference model's mean-pooled last hidden state, centred), k-means (scikit-learn), and
within each cluster visit documents from least to most prototypical (cosine to the centroid),
dropping one whose cosine to an already-kept one exceeds ``threshold``. Score: that maximum cosine
("redundancy"); to meet a budget the most redundant are dropped first.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Iterable

import numpy as np

from ...config import StageConfig, check, check_int, is_int, is_number
from ...errors import ConfigError
from .reference import ReferenceScores, reference_scores
from .selection import Selection, drop, new_selection


@dataclasses.dataclass
class DiversityConfig(StageConfig):
    """SemDeDup: k-means on embeddings, then cosine-threshold deduplication inside each cluster.

    ``clusters``: k (0: ``round(sqrt(N / 2))``, at least 1). ``threshold``: cosine similarity above
    which a document duplicates an already-kept one (SemDeDup's ``1 - eps``). ``center``: subtract
    the mean embedding first (a causal LM's mean-pooled states share a large common direction, which
    would otherwise make every pair look similar). ``embedder``: ``reference`` (the reference model's
    mean-pooled last hidden state) or ``minilm`` (only if ``sentence_transformers`` and an offline
    MiniLM are installed).
    """

    stage: ClassVar[str] = "prune.diversity"
    clusters: int = 0
    threshold: float = 0.95
    center: bool = True
    embedder: str = "reference"
    max_tokens: int = 512
    batch_size: int = 4
    seed: int = 0

    def validate(self) -> None:
        check(is_int(self.clusters) and self.clusters >= 0, f"clusters must be an integer >= 0 (0 = auto), got {self.clusters!r}")
        check(is_number(self.threshold) and -1 < self.threshold <= 1,
              f"diversity threshold (cosine) must be in (-1, 1], got {self.threshold!r}")
        check(isinstance(self.center, bool), "center must be true or false")
        check(self.embedder in ("reference", "minilm"), f"embedder must be reference or minilm, got {self.embedder!r}")
        check_int(self, "max_tokens", 8)
        check_int(self, "batch_size", 1)
        check_int(self, "seed")


def minilm_embeddings(texts: Iterable[str]) -> np.ndarray:  # pragma: no cover - optional, not installed here
    """(N, 384) MiniLM sentence embeddings; needs an offline ``sentence_transformers`` MiniLM install."""
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer("all-MiniLM-L6-v2", local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"the minilm embedder is not available offline here ({type(e).__name__}); "
                          "use embedder='reference'") from e
    return np.asarray(model.encode(list(texts)), dtype=np.float32)


def semdedup(embeddings: np.ndarray, n_keep: int | None, config: DiversityConfig,
             valid: np.ndarray | None = None) -> Selection:
    """SemDeDup over (N, C) ``embeddings``; rows where ``valid`` is false are dropped as unscorable."""
    from sklearn.cluster import KMeans

    n = embeddings.shape[0]
    valid = np.ones(n, dtype=bool) if valid is None else valid
    sel = new_selection("diversity", n)
    for i in np.flatnonzero(~valid):
        drop(sel, i, "unscorable")
    idx = np.flatnonzero(valid)  # (M,)
    cluster_sizes: list[int] = []
    if len(idx):
        x = embeddings[idx].astype(np.float64)  # (M, C)
        if config.center and len(idx) > 1:
            x = x - x.mean(0, keepdims=True)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # unit rows
        k = config.clusters or max(1, round(math.sqrt(len(idx) / 2)))
        k = min(k, len(idx))
        labels = KMeans(n_clusters=k, n_init=3, random_state=config.seed).fit_predict(x) if k > 1 \
            else np.zeros(len(idx), dtype=int)
        for c in range(k):
            members = np.flatnonzero(labels == c)  # positions in idx
            cluster_sizes.append(len(members))
            if not len(members):
                continue
            centroid = x[members].mean(0)
            centroid /= max(np.linalg.norm(centroid), 1e-12)
            # SemDeDup keeps, among duplicates, the one least similar to the centroid: visit in that order.
            order = members[np.argsort(x[members] @ centroid, kind="stable")]
            kept: list[int] = []
            for p in order:
                red = float(np.max(x[kept] @ x[p])) if kept else -1.0  # cosine to the closest kept one
                sel.score[idx[p]] = red
                if red > config.threshold:
                    drop(sel, idx[p], "semantic-duplicate")
                else:
                    kept.append(p)
    alive = np.flatnonzero(sel.keep)
    if n_keep is not None and len(alive) > n_keep:
        # most redundant first (ties: later first)
        order = alive[np.lexsort((-alive, -sel.score[alive]))]
        for i in order[: len(alive) - n_keep]:
            drop(sel, i, "redundancy-budget")
    sel.stats = {"clusters": len(cluster_sizes), "cluster_sizes": sorted(cluster_sizes, reverse=True),
                 "threshold": config.threshold}
    return sel


def diversity_select(texts: Iterable[str], reference=None, n_keep: int | None = None,
                     config: DiversityConfig | None = None, *, scores: ReferenceScores | None = None,
                     progress: bool = False) -> Selection:
    """SemDeDup on ``texts`` with embeddings from ``reference`` (or MiniLM, or a reused pass ``scores``)."""
    config = config or DiversityConfig()
    if config.embedder == "minilm":
        emb = minilm_embeddings(texts)
        valid = np.ones(emb.shape[0], dtype=bool)
    else:
        if scores is None or scores.embeddings is None:
            if reference is None:
                raise ConfigError("diversity needs a reference model for embeddings (CLI: --reference MODEL)")
            scores = reference_scores(reference, texts, max_tokens=config.max_tokens, batch_size=config.batch_size,
                                      embeddings=True, progress=progress, desc="diversity")
        emb, valid = scores.embeddings, np.isfinite(scores.bpb)
    return semdedup(emb, n_keep, config, valid)
