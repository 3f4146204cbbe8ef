"""Router training and evaluation: the build side of :mod:`edge_downscale.runtime.router`.

* **Training data**: requests are prompt-sized, corpora hold whole files. :func:`train_router`
  cuts every document into chunks at line ends, once per size in ``chunk_chars`` (about 200 and
  about 1000 characters by default), so a few long documents become many examples and the router
  learns from text the size of a request, short and long (in the same cross-validation, training
  on 1000-character chunks alone routed 200-character snippets 3 points worse, and whole
  documents no better). At most ``max_chunks_per_label`` chunks per label are kept (a seeded
  sample) to bound training time.
"""
from __future__ import annotations

import dataclasses
import inspect
import random
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..config import check
from ..errors import ConfigError
from ..runtime.router import ROUTERS, CentroidRouter, HashedFeatures, LinearRouter, Router

DEFAULT_CHUNK_CHARS: tuple[int, ...] = (200, 1000)  # train_router's chunk sizes (see the module docstring)


def fit_linear(labels: list[str], x: Any, y: np.ndarray, features: HashedFeatures, *, seed: int = 0,
               C: float = 10.0, max_iter: int = 300, class_weight: str | None = "balanced", solver: str = "lbfgs",
               tol: float = 1e-4, **kw: Any) -> LinearRouter:
    """``"ngram-linear"``: logistic regression on features x: CSR (n, F) and label ids y: (n,)."""
    from sklearn.linear_model import LogisticRegression

    check(isinstance(C, (int, float)) and C > 0, f"C must be > 0, got {C!r}")
    model = LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight, random_state=seed,
                               solver=solver, tol=tol)
    model.fit(x, y)
    coef = np.asarray(model.coef_, np.float32)  # (L, F), or (1, F) with two labels
    bias = np.asarray(model.intercept_, np.float32)  # (L,) or (1,)
    if len(labels) == 2:  # one logit z for label 1: softmax([-z/2, z/2]) == [1 - sigmoid(z), sigmoid(z)]
        coef = np.vstack([-coef / 2, coef / 2])
        bias = np.concatenate([-bias / 2, bias / 2])
    return LinearRouter(labels, features, coef, bias, **kw)


def fit_centroid(labels: list[str], x: Any, y: np.ndarray, features: HashedFeatures, *, seed: int = 0,
                 temperature: float = 0.05, **kw: Any) -> CentroidRouter:
    """Centroids of the L2-normalised rows of x: CSR (n, F) per label id in y: (n,)."""
    centroids = np.zeros((len(labels), features.dim), np.float32)  # (L, F)
    for i in range(len(labels)):
        mean = np.asarray(x[y == i].mean(axis=0)).ravel()  # (F,)
        norm = float(np.linalg.norm(mean))
        centroids[i] = mean / norm if norm > 0 else mean
    return CentroidRouter(labels, features, centroids, temperature=temperature, **kw)


# router type -> its fitter: (labels, x CSR (n, F), y (n,), features, *, seed, ...) -> Router
FITTERS: dict[str, Callable[..., Router]] = {"ngram-linear": fit_linear, "centroid": fit_centroid}


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """``text`` cut into pieces of about ``chunk_chars`` characters, at line ends where possible.

    Lines are gathered until the next would pass ``chunk_chars``; a longer line is cut hard. A last
    piece shorter than a quarter of ``chunk_chars`` joins the one before. Blank pieces are dropped.
    """
    if not isinstance(chunk_chars, int) or isinstance(chunk_chars, bool) or chunk_chars < 16:
        raise ConfigError(f"chunk_chars must be an integer >= 16, got {chunk_chars!r}")
    chunks: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > chunk_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:chunk_chars])
            line = line[chunk_chars:]
        if len(current) + len(line) > chunk_chars and current:
            chunks.append(current)
            current = ""
        current += line
    if current:
        if chunks and len(current) < chunk_chars // 4:
            chunks[-1] += current
        else:
            chunks.append(current)
    return [c for c in chunks if c.strip()]


def _check_texts(texts_by_label: Mapping[str, Sequence[str]], what: str,
                 min_labels: int = 2) -> dict[str, list[str]]:
    if not isinstance(texts_by_label, Mapping) or len(texts_by_label) < min_labels:
        n = len(texts_by_label) if isinstance(texts_by_label, Mapping) else 0
        raise ConfigError(f"{what} needs texts for at least {min_labels} label(s) (domains), got {n}: "
                          "pass {label: [text, ...]} with one entry per ensemble member")
    cleaned: dict[str, list[str]] = {}
    for label, texts in texts_by_label.items():
        if not isinstance(label, str) or not label:
            raise ConfigError(f"{what}: labels must be non-empty strings, got {label!r}")
        if isinstance(texts, str):
            raise ConfigError(f"{what}: label {label!r} maps to a string; give a list of texts")
        kept = [t for t in texts if isinstance(t, str) and t.strip()]
        if not kept:
            raise ConfigError(f"{what}: label {label!r} has no non-empty text; give it at least one document")
        cleaned[label] = kept
    return cleaned


def train_router(texts_by_label: Mapping[str, Sequence[str]], kind: str = "ngram-linear", *,
                 min_confidence: float = 0.0, fallback: str | None = None, seed: int = 0,
                 **options: Any) -> Router:
    """Train a ``kind`` router ("ngram-linear" or "centroid") on ``{label: [document, ...]}``.

    Every document is cut at line ends into chunks of about ``chunk_chars`` characters, once per
    size when it is a list (default ``(200, 1000)``): requests are prompt-sized, and a few long
    documents become many examples. At most ``max_chunks_per_label`` (default 20000; None for all)
    chunks per label are kept, a sample drawn with ``seed``. ``fallback`` defaults to the label
    with the most training text.

    Other options: any :class:`HashedFeatures` field (``ngram_range``, ``n_features``,
    ``word_ngram_range``, ``max_chars``...), or ``features=HashedFeatures(...)``; for
    "ngram-linear" ``C``, ``max_iter``, ``class_weight``, ``solver``, ``tol`` (of scikit-learn's
    ``LogisticRegression``); for "centroid" ``temperature``.
    """
    if kind not in ROUTERS:
        raise ConfigError(f"unknown router type {kind!r}; known types: {', '.join(sorted(ROUTERS))}")
    fit = FITTERS.get(kind)
    if fit is None:
        raise ConfigError(f"router type {kind!r} cannot be trained from texts")
    fit_options = [p.name for p in inspect.signature(fit).parameters.values()
                   if p.kind == p.KEYWORD_ONLY and p.name != "seed"]
    feature_names = [f.name for f in dataclasses.fields(HashedFeatures)]
    stray = sorted(set(options) - set(fit_options) - set(feature_names) - {"chunk_chars", "max_chunks_per_label",
                                                                           "features"})
    if stray:
        raise ConfigError(f"{kind} router: unknown option(s) {', '.join(stray)}; valid: chunk_chars, "
                          f"max_chunks_per_label, features, {', '.join(feature_names + fit_options)}")
    data = _check_texts(texts_by_label, "train_router")
    labels = list(data)
    chunk_chars = options.pop("chunk_chars", DEFAULT_CHUNK_CHARS)
    sizes = (chunk_chars,) if isinstance(chunk_chars, int) else tuple(chunk_chars)
    check(len(sizes) >= 1, "chunk_chars must be an integer or a non-empty list of integers")
    max_chunks = options.pop("max_chunks_per_label", 20000)
    check(max_chunks is None or (isinstance(max_chunks, int) and max_chunks >= 1),
          f"max_chunks_per_label must be None or an integer >= 1, got {max_chunks!r}")
    features = options.pop("features", None)
    feature_opts = {k: options.pop(k) for k in list(options) if k in feature_names}
    if features is None:
        features = HashedFeatures.from_dict(feature_opts)
    elif feature_opts:
        raise ConfigError(f"give either features= or feature options ({', '.join(feature_opts)}), not both")
    elif isinstance(features, dict):
        features = HashedFeatures.from_dict(features)
    if fallback is None:
        fallback = max(labels, key=lambda label: sum(len(t) for t in data[label]))  # first one on a tie

    rng = random.Random(seed)
    texts: list[str] = []
    ids: list[int] = []
    for i, label in enumerate(labels):
        chunks = [c for doc in data[label] for size in sizes for c in chunk_text(doc, size)]
        if max_chunks is not None and len(chunks) > max_chunks:
            chunks = rng.sample(chunks, max_chunks)
        texts.extend(chunks)
        ids.extend([i] * len(chunks))
    x = features.many(texts)  # (n, F) CSR
    y = np.asarray(ids)  # (n,)
    return fit(labels, x, y, features, seed=seed, min_confidence=min_confidence, fallback=fallback,
                   **options)


# --------------------------------------------------------------------------- evaluation and data


def evaluate_router(router: Router, texts_by_label: Mapping[str, Sequence[str]], *,
                    chunk_chars: int | None = 1000, max_per_label: int | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """Accuracy of ``router`` on held-out texts, its confusion matrix and its per-request latency.

    Items are the documents cut by :func:`chunk_text` into ``chunk_chars`` pieces (whole documents
    with ``chunk_chars=None``; the router itself reads at most ``max_chars`` of each); at most
    ``max_per_label`` items per label (a seeded sample). Every item is routed one at a time, as
    requests are, and each ``route()`` call is timed with ``time.perf_counter``. A fallback decision
    counts as the fallback label. Returns ``accuracy``, ``per_label`` accuracy and counts,
    ``confusion`` ({true label: {routed label: count}}), ``n_items``, ``fallback_rate`` and
    ``latency_ms`` (p50, p95, mean, max).
    """
    data = _check_texts(texts_by_label, "evaluate_router", min_labels=1)
    unknown = [label for label in data if label not in router.labels]
    if unknown:
        raise ConfigError(f"evaluate_router: label(s) {unknown} are not routed by this router "
                          f"(its labels: {router.labels})")
    check(max_per_label is None or (isinstance(max_per_label, int) and max_per_label >= 1),
          f"max_per_label must be None or an integer >= 1, got {max_per_label!r}")
    rng = random.Random(seed)
    confusion = {t: {p: 0 for p in router.labels} for t in data}
    per_label: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    fallbacks = 0
    for label, docs in data.items():
        items = [c for d in docs for c in chunk_text(d, chunk_chars)] if chunk_chars else list(docs)
        if max_per_label is not None and len(items) > max_per_label:
            items = rng.sample(items, max_per_label)
        correct = 0
        for text in items:
            t0 = time.perf_counter()
            decision = router.route(text)
            latencies.append(time.perf_counter() - t0)
            confusion[label][decision.label] += 1
            correct += decision.label == label
            fallbacks += decision.fallback
        per_label[label] = {"accuracy": correct / len(items) if items else None, "n_items": len(items)}
    n = len(latencies)
    ms = np.asarray(latencies) * 1e3  # (n,)
    total_correct = sum(confusion[label][label] for label in data)
    return {
        "router": router.name,
        "accuracy": total_correct / n if n else None,
        "per_label": per_label,
        "confusion": confusion,
        "n_items": n,
        "chunk_chars": chunk_chars,
        "fallback_rate": fallbacks / n if n else None,
        "latency_ms": {
            "p50": float(np.percentile(ms, 50)) if n else None,
            "p95": float(np.percentile(ms, 95)) if n else None,
            "mean": float(ms.mean()) if n else None,
            "max": float(ms.max()) if n else None,
        },
    }
