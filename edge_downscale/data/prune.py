"""Data pruning: train on less data, chosen well. Selectors composed into a recipe, with reports.

Every selector is a config dataclass (validated, JSON round-trip) plus one function that takes the
documents (any sequence of texts, only ever iterated front to back, so an HF dataset column
streams) and returns a :class:`Selection`: per document a keep flag, a reason and a score.

Selectors (``STEPS``):

``dedup``       exact duplicates: sha256 of the NFC-normalised, lower-cased, whitespace-collapsed
                text (the same hash as ``build_corpus``); the first copy in order is kept.
``near-dedup``  near-duplicates: MinHash of word shingles + LSH, verified pairs joined by union-find
                (``corpus.near_duplicate_roots``, shared with ``build_corpus``); the first member
                of each group is kept. Score: the group's size.
``quality``     reference-model perplexity pruning (Marion et al. 2023, "When less is more";
                Ankner et al. 2024, "Perplexed by perplexity": a *small* reference model's
                perplexity is a useful signal). Score: bits-per-byte of the first ``max_tokens``
                tokens under the reference model; keep the ``low``, ``middle`` or ``high`` band.
``relevance``   DSIR (Xie et al. 2023, "Data selection for language models via importance
                resampling"): hashed unigram+bigram counts, one smoothed bag-of-ngrams model of
                the target text and one of the pool, log importance weight per document
                (optionally per n-gram); keep the top-k, or importance-resample with Gumbel top-k.
``diversity``   SemDeDup (Abbas et al. 2023): embed (the reference model's mean-pooled last
                hidden state, centred), k-means (scikit-learn), and within each cluster visit
                documents from least to most prototypical (cosine to the centroid), dropping one
                whose cosine to an already-kept one exceeds ``threshold``. Score: that maximum
                cosine ("redundancy"); to meet a budget the most redundant are dropped first.
``active``      active selection: the documents the student finds hardest relative to the teacher
                (student bits-per-byte minus teacher bits-per-byte), picked in rounds. With a
                ``train_callback(texts)`` the student is trained on each round's pick and the rest
                is re-scored; without one the scores cannot change, so it is one top-k pass.

How ``keep`` is spent (``prune_texts``): the budget is ``round(keep * N)`` documents, N the
documents in. Filter steps (``dedup``, ``near-dedup``) drop what they drop. Ranking steps
(``quality``, ``relevance``, ``diversity``, ``active``) share the remaining cut geometrically:
with R documents alive and k ranking steps left, a ranking step keeps ``R * (budget / R) ** (1/k)``,
so the last one lands on the budget exactly (``diversity`` may drop more: its threshold always
applies). When the filters already leave no more than the budget, ranking steps cut nothing but
their thresholds. When a recipe has no ranking step and more than the budget is left, a seeded
random trim (reason ``budget``) cuts to it. Documents without text (or with text that is not
valid Unicode) are dropped before any step (reason ``no-text``); documents a reference model
cannot score (its tokenizer fails, yields nothing or an unknown token) are dropped by that step
(reason ``unscorable``). Both are counted, never fatal.

``prune_corpus`` runs a recipe over the *train* split of a corpus directory and writes a new
corpus directory in ``build_corpus``'s format (validation and test copied untouched), plus
``prune_report.json``, ``decisions.jsonl`` (one line per input train document: kept, step,
reason, scores) and PNG histograms, all in one atomic rename. The input is only read.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from ..config import StageConfig, check, check_int, is_int, is_number
from ..errors import ConfigError, CorpusError, require
from .corpus import (SPLITS, _check_out_dir, corpus_info, exact_hash, load_corpus, near_duplicate_roots,
                     normalised_words, save_corpus, shingles, split_digest)

STEPS: tuple[str, ...] = ("dedup", "near-dedup", "quality", "relevance", "diversity", "active")
FILTER_STEPS = frozenset({"dedup", "near-dedup"})
RANKING_STEPS = frozenset({"quality", "relevance", "diversity", "active"})
MODEL_STEPS = frozenset({"quality", "diversity", "active"})
REPORT = "prune_report.json"
DECISIONS = "decisions.jsonl"
KEPT = "kept"


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Selection:
    """One step's verdict on its input documents (all arrays are (N,), N = documents in)."""

    step: str
    keep: np.ndarray  # (N,) bool
    reason: list[str]  # (N,) "kept" or why it was dropped
    score: np.ndarray  # (N,) float64, NaN where the step gives no score
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_in(self) -> int:
        return len(self.reason)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.reason))

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "step": self.step, "documents_in": self.n_in, "kept": counts.pop(KEPT, 0), "dropped": counts,
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(self.n_in / self.seconds, 2) if self.seconds > 0 else None,
            "stats": self.stats,
        }


def _selection(step: str, n: int) -> Selection:
    return Selection(step, np.ones(n, dtype=bool), [KEPT] * n, np.full(n, np.nan))


def _drop(sel: Selection, i: int, reason: str) -> None:
    sel.keep[i] = False
    sel.reason[i] = reason


def _bar(total: int | None, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=" docs", disable=not progress, leave=False)


# --------------------------------------------------------------------------- 1. exact and near dedup


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
    with _bar(None, "exact dedup", progress) as bar:
        for i, text in enumerate(texts):
            key = exact_hash(normalised_words(text))
            j = first.setdefault(key, i)
            reasons.append(KEPT if j == i else "exact-duplicate")
            scores.append(math.nan if j == i else float(j))
            bar.update()
    keep = np.array([r == KEPT for r in reasons], dtype=bool)
    return Selection("dedup", keep, reasons, np.array(scores, dtype=np.float64),
                     stats={"unique": len(first)})


@dataclasses.dataclass
class NearDedupConfig(StageConfig):
    """MinHash-LSH near-duplicates: estimated Jaccard similarity of word ``shingle_size``-grams."""

    stage: ClassVar[str] = "prune.near-dedup"
    threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 5

    def validate(self) -> None:
        check(is_number(self.threshold) and 0 < self.threshold <= 1,
              f"near-dedup threshold must be in (0, 1], got {self.threshold!r}")
        check_int(self, "num_perm", 16, 1024)
        check_int(self, "shingle_size", 1)


def near_dedup(texts: Iterable[str], config: NearDedupConfig | None = None, *, progress: bool = False) -> Selection:
    """Keep the first member of each near-duplicate group, drop the rest (reason ``near-duplicate``).

    Score: the size of the document's group. ``stats``: groups, groups with more than one member.
    """
    require("datasketch", "compress")
    from datasketch import MinHash

    config = config or NearDedupConfig()
    template = MinHash(num_perm=config.num_perm, seed=1)
    minhashes = []
    with _bar(None, "minhash", progress) as bar:
        for text in texts:
            m = template.copy()
            m.update_batch(shingles(normalised_words(text), config.shingle_size))
            minhashes.append(m)
            bar.update()
    roots = near_duplicate_roots(minhashes, config.threshold, config.num_perm, progress)
    size = collections.Counter(roots)
    sel = _selection("near-dedup", len(roots))
    for i, r in enumerate(roots):
        sel.score[i] = size[r]
        if r != i:
            _drop(sel, i, "near-duplicate")
    sel.stats = {"groups": len(size), "multi_member_groups": sum(1 for n in size.values() if n > 1),
                 "largest_group": max(size.values(), default=0)}
    return sel


# --------------------------------------------------------------------------- reference-model pass


@dataclasses.dataclass
class ReferenceScores:
    """Per document (N,): bits-per-byte of its first tokens (NaN: unscorable) and, optionally, (N, C) embeddings."""

    bpb: np.ndarray  # (N,)
    embeddings: np.ndarray | None  # (N, C) float32, rows of unscorable documents are zero
    n_tokens: np.ndarray  # (N,) tokens scored
    unscorable: dict[str, int]


def _scorable_ids(backend, text: str, max_tokens: int) -> tuple[list[int] | None, int, str]:
    """(ids, bytes they cover, problem): at most ``max_tokens`` token ids of the start of ``text``."""
    try:
        ids = list(backend.tokenize(text[: max_tokens * 32]))[:max_tokens]  # 32 chars/token bounds the work
    except Exception:  # noqa: BLE001 - any tokenizer failure is a counted skip, never a crash
        return None, 0, "tokenizer_error"
    if not ids:
        return None, 0, "no_tokens"
    unk = getattr(getattr(backend, "tokenizer", None), "unk_token_id", None)
    if unk is not None and unk in ids:
        return None, 0, "unknown_token"
    try:
        n_bytes = len(backend.detokenize(ids).encode("utf-8", "replace"))
    except Exception:  # noqa: BLE001
        return None, 0, "tokenizer_error"
    if n_bytes == 0:
        return None, 0, "no_tokens"
    return ids, n_bytes, ""


def _forward_torch(backend, seqs: list[list[int]], want_embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Summed log-probs (B,) of tokens 1.. of each sequence and mean-pooled last hidden states (B, C)."""
    torch = backend.torch
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T) right-padded
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(backend.device), mask.to(backend.device)
    with torch.inference_mode():
        out = backend.model(input_ids=ids, attention_mask=mask, output_hidden_states=want_embeddings)
        logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        tgt = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        tgt = (tgt * mask[:, 1:]).sum(-1)  # (B,)
        emb = None
        if want_embeddings:
            h = out.hidden_states[-1].float()  # (B, T, C), after the final norm
            m = mask.clone()
            m[:, 0] = 0  # the BOS position is the same for every document: leave it out
            m = m.unsqueeze(-1).float()  # (B, T, 1)
            emb = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()  # (B, C)
    return tgt.double().cpu().numpy(), emb


def reference_scores(backend, texts: Iterable[str], *, max_tokens: int = 512, batch_size: int = 4,
                     embeddings: bool = False, progress: bool = False, desc: str = "reference model") -> ReferenceScores:
    """Score the first ``max_tokens`` tokens of every text: bits-per-byte and (torch only) embeddings.

    ``backend``: a :class:`~edge_downscale.models.torch_backend.TorchBackend` (one forward pass gives
    both), or any backend with ``token_logprobs`` (bits-per-byte only). A text the tokenizer cannot
    encode is a counted skip (NaN).
    """
    torch_model = getattr(backend, "model", None) is not None and hasattr(backend, "torch")
    if embeddings and not torch_model:
        raise ConfigError("diversity embeddings need a torch reference model (TorchBackend); "
                          f"got a {type(backend).__name__}")
    max_tokens = max(1, min(max_tokens, backend.context_length - len(backend.prefix_ids)))
    prefix = list(backend.prefix_ids)
    bpb: list[float] = []
    n_tok: list[int] = []
    embs: dict[int, np.ndarray] = {}
    problems: collections.Counter[str] = collections.Counter()
    pending: list[tuple[int, list[int], int]] = []

    def flush() -> None:
        seqs = [prefix + ids for _, ids, _ in pending]
        if torch_model:
            sums, emb = _forward_torch(backend, seqs, embeddings)
        else:
            sums, emb = np.array([float(lp.sum()) for lp in backend.token_logprobs(seqs)]), None
        for k, (i, _, n_bytes) in enumerate(pending):
            bpb[i] = -sums[k] / math.log(2) / n_bytes
            if emb is not None:
                embs[i] = emb[k]
        pending.clear()

    with _bar(None, desc, progress) as bar:
        for i, text in enumerate(texts):
            ids, n_bytes, problem = _scorable_ids(backend, text, max_tokens)
            bpb.append(math.nan)
            n_tok.append(0 if ids is None else len(ids))
            if ids is None:
                problems[problem] += 1
            else:
                pending.append((i, ids, n_bytes))
                if len(pending) >= batch_size:
                    flush()
            bar.update()
        if pending:
            flush()
    out = np.array(bpb, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    emb_arr = None
    if embeddings:
        width = next(iter(embs.values())).shape[0] if embs else 1
        emb_arr = np.zeros((len(bpb), width), dtype=np.float32)  # (N, C)
        for i, e in embs.items():
            emb_arr[i] = e
    return ReferenceScores(out, emb_arr, np.array(n_tok, dtype=np.int64), dict(problems))


# --------------------------------------------------------------------------- 2. quality


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
                 "bpb_all": _quantiles(finite), "bpb_kept": _quantiles(kept),
                 "tokens_scored": int(scores.n_tokens.sum())}
    return sel


def _quantiles(x: np.ndarray) -> dict[str, float] | None:
    if len(x) == 0:
        return None
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {k: round(float(v), 4) for k, v in zip(("min", "p25", "median", "p75", "max"), q)}


# --------------------------------------------------------------------------- 3. diversity (SemDeDup)


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
    sel = _selection("diversity", n)
    for i in np.flatnonzero(~valid):
        _drop(sel, i, "unscorable")
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
                    _drop(sel, idx[p], "semantic-duplicate")
                else:
                    kept.append(p)
    alive = np.flatnonzero(sel.keep)
    if n_keep is not None and len(alive) > n_keep:
        # most redundant first (ties: later first)
        order = alive[np.lexsort((-alive, -sel.score[alive]))]
        for i in order[: len(alive) - n_keep]:
            _drop(sel, i, "redundancy-budget")
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


# --------------------------------------------------------------------------- 4. relevance (DSIR)


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
    sel.stats = {"mode": config.mode, "log_weight_all": _quantiles(w), "log_weight_kept": _quantiles(w[sel.keep])}
    return sel


# --------------------------------------------------------------------------- 5. active selection


@dataclasses.dataclass
class ActiveConfig(StageConfig):
    """Teacher-student loss-gap selection in ``rounds`` (re-scored after each round's training callback)."""

    stage: ClassVar[str] = "prune.active"
    rounds: int = 2
    max_tokens: int = 256
    batch_size: int = 4

    def validate(self) -> None:
        check_int(self, "rounds", 1)
        check_int(self, "max_tokens", 8)
        check_int(self, "batch_size", 1)


TrainCallback = Callable[[list[str]], None]


def active_select(texts: Sequence[str], teacher, student, n_keep: int | None = None,
                  config: ActiveConfig | None = None, *, train_callback: TrainCallback | None = None,
                  teacher_scores: ReferenceScores | None = None, progress: bool = False) -> Selection:
    """Pick the ``n_keep`` documents with the largest gap ``student bpb - teacher bpb``, in rounds.

    Round r picks ``ceil(left / rounds_left)`` of the not-yet-picked documents with the largest gap,
    then calls ``train_callback(picked_texts)`` (e.g. a few optimizer steps on the student) and
    re-scores the rest with the student. Without a callback the scores cannot change between rounds,
    so one pass is made. Bits-per-byte (not per token) so teacher and student may tokenize
    differently. Score: the gap at the time of picking (or of the last scoring).
    """
    config = config or ActiveConfig()
    texts = list(texts) if train_callback is not None else texts
    if teacher_scores is None:
        teacher_scores = reference_scores(teacher, texts, max_tokens=config.max_tokens, batch_size=config.batch_size,
                                          progress=progress, desc="active: teacher")
    t_bpb = teacher_scores.bpb  # (N,)
    n = len(t_bpb)
    n_keep = n if n_keep is None else min(n_keep, n)
    sel = Selection("active", np.zeros(n, dtype=bool), ["not-selected"] * n, np.full(n, np.nan))
    candidates = np.isfinite(t_bpb)
    rounds = config.rounds if train_callback is not None else 1
    left = n_keep
    gap = np.full(n, np.nan)
    scored = np.zeros(n, dtype=bool)
    for r in range(rounds):
        todo = np.flatnonzero(candidates & ~sel.keep)
        if left <= 0 or not len(todo):
            break
        s = reference_scores(student, (texts[i] for i in todo) if train_callback is not None else texts,
                             max_tokens=config.max_tokens, batch_size=config.batch_size, progress=progress,
                             desc=f"active: student round {r + 1}")
        s_bpb = s.bpb if train_callback is not None else s.bpb[todo]
        gap[todo] = s_bpb - t_bpb[todo]
        scored[todo] = True
        valid = todo[np.isfinite(gap[todo])]
        take = math.ceil(left / (rounds - r))
        picked = valid[np.argsort(-gap[valid], kind="stable")[:take]]
        sel.keep[picked] = True
        left -= len(picked)
        if train_callback is not None and r + 1 < rounds:
            train_callback([texts[i] for i in picked])
    sel.score = gap
    for i in range(n):
        if sel.keep[i]:
            sel.reason[i] = KEPT
        elif not np.isfinite(t_bpb[i]) or (np.isnan(gap[i]) and scored[i]):
            sel.reason[i] = "unscorable"
    sel.stats = {"rounds": rounds, "callback": train_callback is not None, "gap_all": _quantiles(gap[np.isfinite(gap)]),
                 "gap_kept": _quantiles(gap[sel.keep])}
    return sel


# --------------------------------------------------------------------------- recipe


_SUB_CONFIGS: dict[str, type[StageConfig]] = {
    "dedup": ExactDedupConfig, "near_dedup": NearDedupConfig, "quality": QualityConfig,
    "relevance": RelevanceConfig, "diversity": DiversityConfig, "active": ActiveConfig,
}


def parse_steps(steps: str | Sequence[str]) -> tuple[str, ...]:
    names = [s.strip() for s in (steps.split(",") if isinstance(steps, str) else steps) if s and s.strip()]
    return tuple(names)


@dataclasses.dataclass
class PruneRecipe(StageConfig):
    """Which selectors run, in which order, and the fraction of train documents to keep.

    ``keep``: fraction of the input train documents kept, in (0, 1] (see the module docstring for
    how it is spread over the steps). ``reference``/``student``: model names or paths for the model
    steps (``active`` uses ``reference`` as the teacher). ``target``: a corpus directory or demo
    domain whose ``target_split`` is DSIR's target. Per-step settings live in the nested configs.
    """

    stage: ClassVar[str] = "prune"
    steps: tuple[str, ...] = ("dedup", "near-dedup", "quality", "diversity")
    keep: float = 0.5
    seed: int = 0
    reference: str | None = None
    student: str | None = None
    target: str | None = None
    target_split: str = "train"
    dedup: ExactDedupConfig = dataclasses.field(default_factory=ExactDedupConfig)
    near_dedup: NearDedupConfig = dataclasses.field(default_factory=NearDedupConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    relevance: RelevanceConfig = dataclasses.field(default_factory=RelevanceConfig)
    diversity: DiversityConfig = dataclasses.field(default_factory=DiversityConfig)
    active: ActiveConfig = dataclasses.field(default_factory=ActiveConfig)

    def validate(self) -> None:
        steps = parse_steps(self.steps) if isinstance(self.steps, (str, tuple, list)) else None
        check(steps is not None and len(steps) > 0, f"steps must be a non-empty list of {', '.join(STEPS)}")
        unknown = [s for s in steps if s not in STEPS]
        check(not unknown, f"unknown pruning step(s) {', '.join(map(repr, unknown))}; available: {', '.join(STEPS)}")
        check(len(set(steps)) == len(steps), f"each step may appear once, got {', '.join(steps)}")
        self.steps = steps
        check(is_number(self.keep) and 0 < self.keep <= 1, f"keep must be a fraction in (0, 1], got {self.keep!r}")
        self.keep = float(self.keep)
        check_int(self, "seed")
        for name in ("reference", "student", "target"):
            v = getattr(self, name)
            check(v is None or (isinstance(v, str) and v != ""), f"{name} must be a non-empty string or None")
        check(self.target_split in SPLITS, f"target_split must be one of {', '.join(SPLITS)}")
        for name, cls in _SUB_CONFIGS.items():
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, cls.from_dict(v))
            check(isinstance(getattr(self, name), cls), f"{name} must be a {cls.__name__} or a dict of its fields")


# --------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class PruneResult:
    """Outcome over the input documents (N,): kept flags, which step dropped each and why."""

    keep: np.ndarray  # (N,) bool
    step: list[str | None]  # (N,) the step that dropped it (None: kept)
    reason: list[str]  # (N,)
    scores: dict[str, np.ndarray]  # step -> (N,) scores (NaN where the step did not see the document)
    selections: list[Selection]
    budget: int

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.reason))


def _load_backend(ref, what: str):
    if ref is None:
        raise ConfigError(f"this recipe needs a {what} model: pass one (CLI: --{what} MODEL, e.g. smollm2-135m)")
    if not isinstance(ref, (str, os.PathLike)):
        return ref
    from ..models.torch_backend import TorchBackend

    return TorchBackend.from_ref(str(ref), context_length=1024)


class _Subset(Sequence[str]):
    """The texts at ``idx`` of a base sequence, iterated in order (streams an HF column in batches)."""

    def __init__(self, base: Any, idx: np.ndarray, batch: int = 256):
        self.base, self.idx, self.batch = base, idx, batch

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k):  # type: ignore[override]
        return self.base[int(self.idx[k])]

    def __iter__(self) -> Iterator[str]:
        if hasattr(self.base, "select"):  # an HF Dataset: read rows in batches, memory-mapped
            for start in range(0, len(self.idx), self.batch):
                yield from self.base.select(self.idx[start:start + self.batch])["text"]
        else:
            for i in self.idx:
                yield self.base[int(i)]


def _valid_text(t: Any) -> bool:
    if not isinstance(t, str) or not t.strip():
        return False
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not valid Unicode text
        return False
    return True


def prune_texts(texts: Sequence[str] | Any, recipe: PruneRecipe | None = None, *, reference=None, student=None,
                target_texts: Iterable[str] | None = None, train_callback: TrainCallback | None = None,
                progress: bool = False) -> PruneResult:
    """Run ``recipe`` over ``texts`` (a sequence of str, or an HF Dataset with a ``text`` column).

    ``reference``/``student``: backends or model refs (defaults: the recipe's). ``target_texts``:
    DSIR's target (default: the recipe's ``target`` corpus). Returns a :class:`PruneResult`.
    """
    recipe = recipe or PruneRecipe()
    if not isinstance(recipe, PruneRecipe):
        raise ConfigError(f"recipe must be a PruneRecipe, got {type(recipe).__name__}")
    base = texts
    n = len(base)
    if n == 0:
        raise CorpusError("no documents to prune: the input is empty; build a corpus with documents first")
    steps = recipe.steps
    budget = max(1, round(recipe.keep * n))
    if "relevance" in steps and target_texts is None:
        if recipe.target is None:
            raise ConfigError("the relevance step needs a target: a corpus directory or demo domain (CLI: --target)")
        target_texts = _target_texts(recipe.target, recipe.target_split)
    if any(s in MODEL_STEPS for s in steps):
        reference = _load_backend(reference if reference is not None else recipe.reference, "reference")
    if "active" in steps:
        student = _load_backend(student if student is not None else recipe.student, "student")

    reason = [KEPT] * n
    dropped_by: list[str | None] = [None] * n
    alive = np.zeros(n, dtype=bool)  # (N,)
    texts_iter = base if not hasattr(base, "select") else _Subset(base, np.arange(n))
    for i, t in enumerate(texts_iter):
        if _valid_text(t):
            alive[i] = True
        else:
            reason[i], dropped_by[i] = "no-text", "input"
    scores: dict[str, np.ndarray] = {}
    # One reference-model pass per max_tokens setting, shared by quality, diversity and active:
    # max_tokens -> {global index: (bpb, row in ref_emb or -1)}
    ref_cache: dict[int, dict[int, tuple[float, int]]] = {}
    ref_emb: list[np.ndarray] = []
    selections: list[Selection] = []
    rankers_left = sum(1 for s in steps if s in RANKING_STEPS)

    def cached_reference(idx: np.ndarray, max_tokens: int, batch_size: int, want_emb: bool) -> ReferenceScores:
        """Reference scores of the documents ``idx`` (computed once, embeddings too when torch)."""
        cache = ref_cache.setdefault(max_tokens, {})
        missing = np.array([i for i in idx if int(i) not in cache], dtype=np.int64)
        if len(missing):
            torch_model = hasattr(reference, "torch") and getattr(reference, "model", None) is not None
            rs = reference_scores(reference, _Subset(base, missing), max_tokens=max_tokens, batch_size=batch_size,
                                  embeddings=torch_model, progress=progress, desc="reference model")
            for k, i in enumerate(missing):
                row = -1
                if rs.embeddings is not None and np.isfinite(rs.bpb[k]):
                    ref_emb.append(rs.embeddings[k])
                    row = len(ref_emb) - 1
                cache[int(i)] = (float(rs.bpb[k]), row)
            unscorable.update(rs.unscorable)
        bpb = np.array([cache[int(i)][0] for i in idx], dtype=np.float64)  # (M,)
        emb = None
        if want_emb:
            width = ref_emb[0].shape[0] if ref_emb else 1
            emb = np.zeros((len(idx), width), dtype=np.float32)  # (M, C)
            for k, i in enumerate(idx):
                row = cache[int(i)][1]
                if row >= 0:
                    emb[k] = ref_emb[row]
        return ReferenceScores(bpb, emb, np.zeros(len(idx), dtype=np.int64), dict(unscorable))

    unscorable: collections.Counter[str] = collections.Counter()

    for step in steps:
        idx = np.flatnonzero(alive)  # (R,) global indices alive before this step
        sub = _Subset(base, idx)
        n_keep: int | None = None
        if step in RANKING_STEPS:
            r = len(idx)
            n_keep = r if r <= budget else (budget if rankers_left == 1 else round(r * (budget / r) ** (1 / rankers_left)))
            rankers_left -= 1
        t0 = time.perf_counter()
        if not len(idx):
            sel = _selection(step, 0)
        elif step == "dedup":
            sel = exact_dedup(sub, recipe.dedup, progress=progress)
        elif step == "near-dedup":
            sel = near_dedup(sub, recipe.near_dedup, progress=progress)
        elif step == "quality":
            rs = cached_reference(idx, recipe.quality.max_tokens, recipe.quality.batch_size, False)
            sel = quality_select(sub, reference, n_keep, recipe.quality, scores=rs, progress=progress)
        elif step == "diversity":
            rs = None
            if recipe.diversity.embedder == "reference":
                rs = cached_reference(idx, recipe.diversity.max_tokens, recipe.diversity.batch_size, True)
            sel = diversity_select(sub, reference, n_keep, recipe.diversity, scores=rs, progress=progress)
        elif step == "relevance":
            sel = relevance_select(sub, target_texts, n_keep, recipe.relevance, progress=progress)
        elif step == "active":
            rs = cached_reference(idx, recipe.active.max_tokens, recipe.active.batch_size, False)
            sel = active_select(sub, reference, student, n_keep, recipe.active, train_callback=train_callback,
                                teacher_scores=rs, progress=progress)
        else:  # pragma: no cover - validated
            raise ConfigError(f"unknown step {step!r}")
        sel.seconds = time.perf_counter() - t0
        sel.stats["budget"] = n_keep
        selections.append(sel)
        full = np.full(n, np.nan)
        full[idx] = sel.score
        scores[step] = full
        for k, i in enumerate(idx):
            if not sel.keep[k]:
                alive[i] = False
                reason[i], dropped_by[i] = sel.reason[k], step
    idx = np.flatnonzero(alive)
    if len(idx) > budget:
        t0 = time.perf_counter()
        sel = _selection("budget", len(idx))
        rng = np.random.default_rng(recipe.seed)
        for k in rng.choice(len(idx), size=len(idx) - budget, replace=False):
            _drop(sel, int(k), "budget")
        sel.seconds = time.perf_counter() - t0
        sel.stats["budget"] = budget
        selections.append(sel)
        for k, i in enumerate(idx):
            if not sel.keep[k]:
                alive[i] = False
                reason[i], dropped_by[i] = "budget", "budget"
    return PruneResult(alive, dropped_by, reason, scores, selections, budget)


def _target_texts(target: str, split: str) -> list[str]:
    from .sources import DEMO_DOMAINS

    if target in DEMO_DOMAINS:
        from .corpus import demo_corpus

        path = demo_corpus(target, progress=False)
    else:
        path = Path(target).expanduser()
    texts = [t for t in load_corpus(path)[split]["text"] if _valid_text(t)]
    if not texts:
        raise CorpusError(f"the relevance target {target} has no text in its {split} split: choose another target or split")
    return texts


def random_subset(n: int, keep: float, seed: int = 0) -> np.ndarray:
    """(N,) bool: a seeded uniformly random ``round(keep * n)`` documents (the baseline)."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=max(1, round(keep * n)), replace=False)] = True
    return mask


# --------------------------------------------------------------------------- corpus in, corpus out


def _resolve_input(in_dir: str | os.PathLike) -> Path:
    from .sources import DEMO_DOMAINS

    if isinstance(in_dir, str) and in_dir in DEMO_DOMAINS and not Path(in_dir).exists():
        from .corpus import demo_corpus

        return demo_corpus(in_dir, progress=False)
    return Path(in_dir).expanduser()


def _histograms(result: PruneResult) -> dict[str, bytes]:
    """PNG histograms (matplotlib, Agg): reference bits-per-byte, cluster sizes, DSIR weights, gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[name] = buf.getvalue()

    for step, fname, xlabel in (("quality", "hist_perplexity.png", "bits per byte under the reference model"),
                                ("relevance", "hist_relevance.png", "DSIR log importance weight"),
                                ("active", "hist_active_gap.png", "student - teacher bits per byte")):
        if step not in result.scores:
            continue
        s = result.scores[step]
        seen = np.isfinite(s)
        if not seen.any():
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.histogram_bin_edges(s[seen], bins=40)
        ax.hist(s[seen & result.keep], bins=bins, alpha=0.7, label="kept")
        ax.hist(s[seen & ~result.keep], bins=bins, alpha=0.7, label="dropped")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("documents")
        ax.legend()
        ax.set_title(f"{step}: {int(seen.sum())} documents scored")
        save(fig, fname)
    for sel in result.selections:
        if sel.step == "diversity" and sel.stats.get("cluster_sizes"):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            sizes = sel.stats["cluster_sizes"]
            ax.hist(sizes, bins=min(40, max(5, len(sizes))))
            ax.set_xlabel("k-means cluster size (documents)")
            ax.set_ylabel("clusters")
            ax.set_title(f"diversity: {len(sizes)} clusters")
            save(fig, "hist_cluster_sizes.png")
    return out


def prune_corpus(in_dir: str | os.PathLike, out_dir: str | os.PathLike, recipe: PruneRecipe | None = None, *,
                 reference=None, student=None, target_texts: Iterable[str] | None = None,
                 train_callback: TrainCallback | None = None, progress: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
    """Prune the train split of corpus ``in_dir`` into a new corpus ``out_dir``; returns the report.

    ``in_dir``: a corpus directory (``edge-downscale data build``) or a demo domain name. The
    validation and test splits are copied unchanged. ``out_dir`` gets the corpus (same format as
    ``build_corpus``), ``prune_report.json``, ``decisions.jsonl`` and ``hist_*.png``.
    """
    datasets = require("datasets", "compress")
    from .. import __version__

    recipe = recipe or PruneRecipe()
    if not isinstance(recipe, PruneRecipe):
        raise ConfigError(f"recipe must be a PruneRecipe, got {type(recipe).__name__}")
    src = _resolve_input(in_dir)
    out = Path(out_dir).expanduser()
    if src.exists() and out.exists() and src.resolve() == out.resolve():
        raise CorpusError(f"the output {out} is the input corpus: choose another --out (the input is never modified)")
    info = corpus_info(src)
    corpus = load_corpus(src)
    train = corpus["train"]
    if "text" not in train.column_names:
        raise CorpusError(f"{src}: the train split has no 'text' column (columns: {', '.join(train.column_names)}); "
                          "rebuild it with `edge-downscale data build`")
    if len(train) == 0:
        raise CorpusError(f"{src}: the train split is empty; nothing to prune (build a corpus with more documents)")
    _check_out_dir(out, overwrite)
    t0 = time.perf_counter()
    if any(st in MODEL_STEPS for st in recipe.steps):  # load once here, so tokens can be counted with it
        reference = _load_backend(reference if reference is not None else recipe.reference, "reference")
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        result = prune_texts(train, recipe, reference=reference, student=student, target_texts=target_texts,
                             train_callback=train_callback, progress=progress)
        kept_idx = np.flatnonzero(result.keep)
        pruned = train.select(kept_idx)
        # tokens before/after with the reference tokenizer when one is loaded, bytes and words always
        ref_backend = reference if (reference is not None and not isinstance(reference, (str, os.PathLike))) else None
        before = _measure(_Subset(train, np.arange(len(train))), ref_backend, progress, "measuring input")
        after = _measure(_Subset(train, kept_idx), ref_backend, progress, "measuring output")
        texts_after = _Subset(train, kept_idx)
        manifest = json.loads(json.dumps(info))
        manifest["splits"]["train"] = {
            "documents": len(kept_idx), "bytes": after["bytes"],
            "groups": len(set(pruned["group"])) if "group" in pruned.column_names else None,
            "sha256": split_digest(texts_after),
        }
        manifest["documents"] = sum(s["documents"] for s in manifest["splits"].values())
        manifest["bytes"] = sum(s["bytes"] for s in manifest["splits"].values())
        manifest["empty_splits"] = [n for n in SPLITS if manifest["splits"][n]["documents"] == 0]
        manifest["pruned_from"] = {"path": str(src.resolve()), "train_sha256": info["splits"]["train"].get("sha256"),
                                   "recipe": recipe.to_dict(), "report": REPORT}
        manifest["created"] = _now()
        manifest["edge_downscale_version"] = __version__
        hist = _histograms(result)
        report = {
            "input": str(src.resolve()), "output": str(out.resolve()), "recipe": recipe.to_dict(),
            "keep": recipe.keep, "budget_documents": result.budget,
            "before": before, "after": after,
            "kept_fraction": {"documents": len(kept_idx) / len(train),
                              "bytes": after["bytes"] / before["bytes"] if before["bytes"] else None},
            "dropped": {k: v for k, v in result.counts().items() if k != KEPT},
            "steps": [s.summary() for s in result.selections],
            "untouched_splits": ["validation", "test"],
            "histograms": sorted(hist),
            "seconds": None,
        }
        ids = train["source"] if "source" in train.column_names else None
        lines = []
        for i in range(len(train)):
            row = {"index": i, "source": ids[i] if ids is not None else None, "kept": bool(result.keep[i]),
                   "step": result.step[i], "reason": result.reason[i]}
            row.update({f"score_{k}": (None if not np.isfinite(v[i]) else round(float(v[i]), 6))
                        for k, v in result.scores.items()})
            lines.append(json.dumps(row))
        report["seconds"] = round(time.perf_counter() - t0, 3)
        extra = {REPORT: (json.dumps(report, indent=2) + "\n").encode("utf-8"),
                 DECISIONS: ("\n".join(lines) + "\n").encode("utf-8"), **hist}
        parts = {"train": pruned, "validation": corpus["validation"], "test": corpus["test"]}
        save_corpus(out, parts, manifest, t0=t0, seconds_key="prune_seconds", extra_files=extra)
        return report
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _measure(texts: Iterable[str], backend, progress: bool, desc: str) -> dict[str, Any]:
    docs = n_bytes = words = tokens = 0
    with _bar(None, desc, progress) as bar:
        for t in texts:
            t = t if isinstance(t, str) else ""
            docs += 1
            n_bytes += len(t.encode("utf-8", "replace"))
            words += len(t.split())
            if backend is not None:
                try:
                    tokens += len(backend.tokenize(t))
                except Exception:  # noqa: BLE001 - counted elsewhere as unscorable
                    pass
            bar.update()
    out: dict[str, Any] = {"documents": docs, "bytes": n_bytes, "words": words}
    if backend is not None:
        out["tokens"] = tokens
    return out


def digest_dir(path: str | os.PathLike) -> str:
    """sha256 over every file's relative path and bytes under ``path`` (to check it is unchanged)."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


__all__ = [
    "STEPS", "ActiveConfig", "DiversityConfig", "ExactDedupConfig", "NearDedupConfig", "PruneRecipe", "PruneResult",
    "QualityConfig", "ReferenceScores", "RelevanceConfig", "Selection", "active_select", "band_indices",
    "diversity_select", "dsir_weights", "exact_dedup", "hashed_ngrams", "near_dedup", "prune_corpus", "prune_texts",
    "quality_select", "random_subset", "reference_scores", "relevance_select", "semdedup", "digest_dir",
]
