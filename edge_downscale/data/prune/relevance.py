"""``relevance``: DSIR (Xie et al. 2023, "Data selection for language models via importance resampling").

Hashed unigram+bigram counts, one smoothed bag-of-ngrams model of the target text and one of the
pool, log importance weight per document (optionally per n-gram); keep the top-k, or
importance-resample with Gumbel top-k.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Iterable

import numpy as np

from ...config import StageConfig, check, check_int, is_int, is_number
from ...errors import CorpusError
from .selection import KEPT, Selection, quantiles


@dataclasses.dataclass
class RelevanceConfig(StageConfig):
    """DSIR importance weights of a target domain versus the pool.

    ``buckets``: hashed n-gram vocabulary size. ``bigrams``: unigrams + bigrams (else unigrams).
    ``smoothing``: add-``smoothing`` counts in both bag-of-ngrams models. ``length_normalise``: the
    log weight per n-gram instead of per document (long documents do not win by length).
    ``mode``: ``topk`` (deterministic) or ``resample`` (Gumbel top-k, i.e. sampling without
    replacement proportionally to the importance weights, seeded).
    """

    stage: ClassVar[str] = "prune.relevance"
    buckets: int = 10_000
    bigrams: bool = True
    smoothing: float = 1.0
    length_normalise: bool = True
    mode: str = "topk"
    seed: int = 0

    def validate(self) -> None:
        check(is_int(self.buckets) and 16 <= self.buckets <= 1 << 24, f"buckets must be an integer in [16, 2^24], got {self.buckets!r}")
        check(isinstance(self.bigrams, bool), "bigrams must be true or false")
        check(is_number(self.smoothing) and self.smoothing > 0, f"smoothing must be > 0, got {self.smoothing!r}")
        check(isinstance(self.length_normalise, bool), "length_normalise must be true or false")
        check(self.mode in ("topk", "resample"), f"mode must be topk or resample, got {self.mode!r}")
        check_int(self, "seed")


def hashed_ngrams(texts: Iterable[str], config: RelevanceConfig):
    """(N, buckets) sparse counts of lower-cased word/punctuation unigrams (+ bigrams), murmur-hashed."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=config.buckets, ngram_range=(1, 2 if config.bigrams else 1),
                            token_pattern=r"\w+|[^\w\s]", lowercase=True, alternate_sign=False, norm=None,
                            dtype=np.float64)
    return vec.transform(texts)


def dsir_weights(texts: Iterable[str], target_texts: Iterable[str], config: RelevanceConfig | None = None,
                 *, progress: bool = False) -> np.ndarray:
    """(N,) log importance weights ``log p_target(x) - log p_pool(x)`` under the hashed bag-of-ngrams models."""
    config = config or RelevanceConfig()
    x = hashed_ngrams(texts, config)  # (N, B) sparse
    t = hashed_ngrams(target_texts, config)  # (M, B) sparse
    if t.shape[0] == 0 or t.sum() == 0:
        raise CorpusError("the relevance target has no text: give a non-empty target corpus or demo domain")
    pool = np.asarray(x.sum(0)).ravel() + config.smoothing  # (B,)
    target = np.asarray(t.sum(0)).ravel() + config.smoothing  # (B,)
    log_ratio = np.log(target / target.sum()) - np.log(pool / pool.sum())  # (B,)
    w = x @ log_ratio  # (N,)
    if config.length_normalise:
        w = w / np.maximum(np.asarray(x.sum(1)).ravel(), 1.0)
    return np.asarray(w, dtype=np.float64)


def relevance_select(texts: Iterable[str], target_texts: Iterable[str], n_keep: int | None = None,
                     config: RelevanceConfig | None = None, *, progress: bool = False) -> Selection:
    """Keep ``n_keep`` documents by DSIR importance (reason ``low-relevance``). Score: the log weight."""
    config = config or RelevanceConfig()
    w = dsir_weights(texts, target_texts, config, progress=progress)  # (N,)
    n = len(w)
    n_keep = n if n_keep is None else min(n_keep, n)
    key = w.copy()
    if config.mode == "resample":
        # Gumbel top-k = sampling without replacement with probabilities proportional to exp(w).
        key = key + np.random.default_rng(config.seed).gumbel(size=n)
    chosen = np.argsort(-key, kind="stable")[:n_keep]
    sel = Selection("relevance", np.zeros(n, dtype=bool), ["low-relevance"] * n, w)
    for i in chosen:
        sel.keep[i], sel.reason[i] = True, KEPT
    sel.stats = {"mode": config.mode, "log_weight_all": quantiles(w), "log_weight_kept": quantiles(w[sel.keep])}
    return sel
