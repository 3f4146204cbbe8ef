"""Request routers: pick the ensemble member (a domain specialist) that should answer a request.

The ``route`` strategy of an ensemble sends each request to one member. The router that decides is
trained when the bundle is built, from the same domain corpora the members were specialised on, and
runs offline, in about a millisecond on one CPU core, with numpy and scikit-learn's stateless
:class:`~sklearn.feature_extraction.text.HashingVectorizer` only (no torch, no pickle).

Design
------
* **Features** (:class:`HashedFeatures`): hashed character n-grams inside word boundaries
  (``char_wb``, 2-4 by default) into ``n_features`` (2**18) buckets, optionally followed by a
  second block of hashed word n-grams. Counts are ``log1p``-damped (``sublinear_tf``) and the row
  is L2 normalised. Hashing needs no vocabulary, so the whole feature extractor is its JSON
  parameters. On the demo domains (3-fold cross-validation over the train splits) word 1-2 grams
  added under a point of accuracy for ~0.3 ms a request, so they are off by default; 3-4 or 3-5
  character grams alone are a third faster but routed 200-character snippets 4-5 points worse.
  Requests longer than ``max_chars`` (2000 by default) are cut to their first ``max_chars``
  characters before hashing: routing cost is bounded whatever the request size, and the opening of
  a prompt says enough about its domain.
* **Scoring**: both routers are linear in those features, ``logits = W @ x + b`` with ``W`` of shape
  (labels, features), followed by a softmax. ``"ngram-linear"`` learns ``W, b`` with a multinomial
  logistic regression (class-balanced, C=10, L-BFGS: ~16 s on the 43k chunks of the demo train
  splits; SAGA did not converge there in 300 epochs); ``"centroid"`` uses one L2-normalised mean feature vector
  per label as the rows of ``W`` (so ``W @ x`` is a cosine similarity) and ``b = 0``, divided by a
  ``temperature`` before the softmax. At run time only the columns of ``x``'s non-zero features are
  gathered: ``W[:, idx] @ x[idx]``, a few thousand multiply-adds.
* **Fallback**: when the top probability is below ``min_confidence`` the request goes to the
  ``fallback`` label (by default the label with the most training text: the broadest specialist)
  and the decision says ``fallback=True``.
* **Training data**: requests are prompt-sized, corpora hold whole files. :func:`train_router`
  cuts every document into chunks at line ends, once per size in ``chunk_chars`` (about 200 and
  about 1000 characters by default), so a few long documents become many examples and the router
  learns from text the size of a request, short and long (in the same cross-validation, training
  on 1000-character chunks alone routed 200-character snippets 3 points worse, and whole
  documents no better). At most ``max_chunks_per_label`` chunks per label are kept (a seeded
  sample) to bound training time.
* **State**: :meth:`Router.save` writes one ``router.npz`` (numpy arrays only, readable with
  ``allow_pickle=False``: the non-zero columns of ``W`` and ``b``), atomically, and returns a small
  JSON-able spec (type, labels, feature parameters, fallback, file name and sha256) that the bundle's
  ``ensemble.json`` keeps under ``"router"``; :func:`load_router` reverses it.

scikit-learn (a core dependency) is imported only when a router is trained or loaded, and ``datasets``
only by :func:`texts_by_domain`: importing this module stays as light as the rest of the runtime.
"""
from __future__ import annotations

import abc
import dataclasses
import inspect
import random
import time
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from .._io import atomic_path, sha256_file
from ..config import StageConfig, check, registrar
from ..errors import ConfigError, ModelFormatError

__all__ = [
    "ROUTERS", "CentroidRouter", "HashedFeatures", "LinearRouter", "RouteDecision", "Router", "chunk_text",
    "evaluate_router", "load_router", "register_router", "texts_by_domain", "train_router",
]

STATE_FILE = "router.npz"
STATE_VERSION = 1
DEFAULT_CHUNK_CHARS: tuple[int, ...] = (200, 1000)  # train_router's chunk sizes (see the module docstring)


# --------------------------------------------------------------------------- decisions


@dataclasses.dataclass
class RouteDecision:
    """Where one request goes and how sure the router is."""

    label: str  # the chosen domain, or the fallback label
    confidence: float  # probability of the top label (also when the fallback was used)
    scores: dict[str, float]  # probability per label, summing to 1
    fallback: bool  # True when confidence < min_confidence and ``label`` is the fallback
    seconds: float  # decision latency (features + scoring)


# --------------------------------------------------------------------------- features


def _pair(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _is_ngram_range(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in value) and 1 <= value[0] <= value[1])


@dataclasses.dataclass
class HashedFeatures(StageConfig):
    """Hashed n-gram features: a ``char_wb``/``char`` block, optionally a word n-gram block after it.

    The feature vector has ``n_features + word_n_features`` dimensions (the second term only with
    ``word_ngram_range``). Counts are ``log1p``-damped when ``sublinear_tf``; each row is L2
    normalised over both blocks. Texts are cut to their first ``max_chars`` characters.
    """

    stage: ClassVar[str] = "router-features"
    analyzer: str = "char_wb"
    ngram_range: tuple[int, int] = (2, 4)
    n_features: int = 2**18
    word_ngram_range: tuple[int, int] | None = None
    word_n_features: int = 2**18
    lowercase: bool = True
    sublinear_tf: bool = True
    max_chars: int = 2000

    def __post_init__(self) -> None:
        self.ngram_range = _pair(self.ngram_range)
        self.word_ngram_range = _pair(self.word_ngram_range)
        super().__post_init__()
        self._vectorizers: list[Any] | None = None

    def validate(self) -> None:
        check(self.analyzer in ("char_wb", "char"), f"analyzer must be 'char_wb' or 'char', got {self.analyzer!r}")
        check(_is_ngram_range(self.ngram_range), f"ngram_range must be (min, max) with 1 <= min <= max, "
                                                 f"got {self.ngram_range!r}")
        check(self.word_ngram_range is None or _is_ngram_range(self.word_ngram_range),
              f"word_ngram_range must be None or (min, max) with 1 <= min <= max, got {self.word_ngram_range!r}")
        for name in ("n_features", "word_n_features"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and 16 <= value <= 2**20,
                  f"{name} must be an integer in [16, 2**20], got {value!r}")
        check(isinstance(self.max_chars, int) and not isinstance(self.max_chars, bool) and self.max_chars >= 16,
              f"max_chars must be an integer >= 16, got {self.max_chars!r}")
        check(isinstance(self.lowercase, bool) and isinstance(self.sublinear_tf, bool),
              "lowercase and sublinear_tf must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashedFeatures) and self.to_dict() == other.to_dict()

    @property
    def dim(self) -> int:
        return self.n_features + (self.word_n_features if self.word_ngram_range else 0)

    def vectorizers(self) -> list[Any]:
        """The stateless HashingVectorizers of the blocks (built once; no fitting, no saved state)."""
        if self._vectorizers is None:
            from sklearn.feature_extraction import text

            common = dict(alternate_sign=False, norm=None, lowercase=self.lowercase, dtype=np.float32)
            vecs = [text.HashingVectorizer(analyzer=self.analyzer, ngram_range=self.ngram_range,
                                           n_features=self.n_features, **common)]
            if self.word_ngram_range:
                vecs.append(text.HashingVectorizer(analyzer="word", ngram_range=self.word_ngram_range,
                                                   n_features=self.word_n_features,
                                                   token_pattern=r"(?u)\b\w+\b|[^\w\s]", **common))
            self._vectorizers = vecs
        return self._vectorizers

    def one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Sparse features of one text: (indices (nnz,) int32, values (nnz,) float32), L2 normalised."""
        text = text[: self.max_chars]
        idx, val, offset = [], [], 0
        for vec in self.vectorizers():
            row = vec.transform([text])  # (1, block) CSR, duplicates summed
            idx.append(row.indices + offset)
            val.append(row.data)
            offset += vec.n_features
        indices = np.concatenate(idx) if len(idx) > 1 else idx[0]
        values = np.concatenate(val) if len(val) > 1 else val[0]
        if self.sublinear_tf:
            values = np.log1p(values)
        norm = float(np.sqrt(np.dot(values, values)))
        if norm > 0:
            values = values / norm
        return indices, values.astype(np.float32, copy=False)

    def many(self, texts: Sequence[str]) -> Any:
        """Features of many texts: CSR (n, dim) float32, each row as :meth:`one` computes it."""
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        cut = [t[: self.max_chars] for t in texts]
        blocks = [vec.transform(cut) for vec in self.vectorizers()]  # each (n, block) CSR
        x = blocks[0] if len(blocks) == 1 else sp.hstack(blocks, format="csr")
        x = x.astype(np.float32)
        if self.sublinear_tf:
            np.log1p(x.data, out=x.data)
        return normalize(x, norm="l2", copy=False)


# --------------------------------------------------------------------------- routers


class Router(abc.ABC):
    """Chooses one label (domain) per request. Subclasses implement routing and their state files."""

    name: ClassVar[str] = "router"
    capabilities: ClassVar[frozenset[str]] = frozenset({"scores"})  # also: "trainable"
    labels: list[str]  # the domains, in score order

    def __init__(self, labels: Sequence[str], *, min_confidence: float = 0.0, fallback: str | None = None):
        labels = list(labels)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"a router needs at least 2 distinct labels, got {labels}")
        if not (isinstance(min_confidence, (int, float)) and 0.0 <= min_confidence <= 1.0):
            raise ConfigError(f"min_confidence must be a probability in [0, 1], got {min_confidence!r}")
        fallback = labels[0] if fallback is None else fallback
        if fallback not in labels:
            raise ConfigError(f"fallback label {fallback!r} is not one of the router's labels {labels}")
        self.labels: list[str] = labels
        self.min_confidence = float(min_confidence)
        self.fallback = fallback

    @abc.abstractmethod
    def route(self, text: str) -> RouteDecision:
        """The label for ``text`` with per-label probabilities; the fallback below ``min_confidence``."""

    @abc.abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the state files into ``directory`` (atomically) and return a JSON-able spec of them."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: Path, spec: dict[str, Any]) -> "Router":
        """The router that :meth:`save` wrote into ``directory`` and described with ``spec``."""

    def _decide(self, probs: np.ndarray, t0: float) -> RouteDecision:
        """A decision from the label probabilities ``probs`` (L,), timed from ``t0``."""
        top = int(np.argmax(probs))
        confidence = float(probs[top])
        fallback = confidence < self.min_confidence
        label = self.fallback if fallback else self.labels[top]
        scores = {name: float(p) for name, p in zip(self.labels, probs)}
        return RouteDecision(label, confidence, scores, fallback, time.perf_counter() - t0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(labels={self.labels}, fallback={self.fallback!r})"


# name -> class, filled by @register_router.
ROUTERS: dict[str, type[Router]] = {}


register_router = registrar(ROUTERS, "router type")


def load_router(directory: str | Path, spec: dict[str, Any]) -> Router:
    """The router described by ``spec`` (an ``ensemble.json``'s ``"router"`` entry) from ``directory``."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in ROUTERS:
        raise ConfigError(f"unknown router type {kind!r}; known types: {', '.join(sorted(ROUTERS))}")
    return ROUTERS[kind].load(Path(directory), spec)


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax of logits z: (L,) -> (L,) float64."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


class _HashedLinearRouter(Router):
    """Shared machinery: hashed features, ``softmax(scale * (W @ x) + b)``, one ``.npz`` of state."""

    capabilities = frozenset({"scores", "trainable"})

    def __init__(self, labels: Sequence[str], features: HashedFeatures, weights: np.ndarray,
                 intercept: np.ndarray | None = None, *, min_confidence: float = 0.0, fallback: str | None = None):
        super().__init__(labels, min_confidence=min_confidence, fallback=fallback)
        n = len(self.labels)
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        if weights.shape != (n, features.dim):
            raise ConfigError(f"{self.name}: weights must have shape {(n, features.dim)}, got {weights.shape}")
        self.features = features
        # Transposed (F, L): the request's non-zero features pick contiguous rows.
        self._wt = np.ascontiguousarray(weights.T)  # (F, L)
        self.intercept = np.zeros(n, np.float32) if intercept is None else np.asarray(intercept, np.float32)  # (L,)
        if self.intercept.shape != (n,):
            raise ConfigError(f"{self.name}: intercept must have shape ({n},), got {self.intercept.shape}")

    @property
    def weights(self) -> np.ndarray:
        """W: (L, F) float32."""
        return self._wt.T

    @property
    def scale(self) -> float:
        return 1.0

    def _extra_spec(self) -> dict[str, Any]:
        return {}

    def logits(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``scale * (W @ x) + b`` for sparse x given as (indices (nnz,), values (nnz,)) -> (L,)."""
        return self.scale * (values @ self._wt[indices]) + self.intercept  # (nnz,) @ (nnz, L) -> (L,)

    def route(self, text: str) -> RouteDecision:
        t0 = time.perf_counter()
        indices, values = self.features.one(text)
        return self._decide(_softmax(self.logits(indices, values)), t0)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Label probabilities of many texts at once: (n, L) float64 (no fallback applied)."""
        x = self.features.many(texts)  # (n, F)
        z = self.scale * np.asarray(x @ self._wt, dtype=np.float64) + self.intercept  # (n, L)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, directory: Path) -> dict[str, Any]:
        directory = Path(directory)
        nonzero = np.flatnonzero(np.any(self._wt != 0, axis=1)).astype(np.int32)  # (K,) feature ids
        path = directory / STATE_FILE
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, columns=nonzero,  # (K,) int32
                                    weights=np.ascontiguousarray(self._wt[nonzero].T),  # (L, K) float32
                                    intercept=self.intercept)  # (L,) float32
        return {
            "type": self.name,
            "version": STATE_VERSION,
            "labels": list(self.labels),
            "min_confidence": self.min_confidence,
            "fallback": self.fallback,
            "features": self.features.to_dict(),
            **self._extra_spec(),
            "file": STATE_FILE,
            "sha256": sha256_file(path),
        }

    @classmethod
    def _read_state(cls, directory: Path, spec: dict[str, Any]) -> tuple[HashedFeatures, np.ndarray, np.ndarray]:
        """(features, W (L, F), b (L,)) from a saved spec and its ``.npz``."""
        missing = [k for k in ("labels", "features", "file") if k not in spec]
        if missing:
            raise ConfigError(f"{cls.name} router spec lacks {', '.join(missing)}: rebuild the bundle")
        if spec.get("version", STATE_VERSION) != STATE_VERSION:
            raise ConfigError(f"{cls.name} router state version {spec.get('version')!r} is not supported "
                              f"(this library reads version {STATE_VERSION}): rebuild the bundle")
        features = HashedFeatures.from_dict(spec["features"])
        path = Path(directory) / spec["file"]
        if not path.is_file():
            raise ModelFormatError(f"router state {path} is missing: rebuild the bundle")
        if spec.get("sha256") and sha256_file(path) != spec["sha256"]:
            raise ModelFormatError(f"router state {path} does not match its sha256 in the spec: rebuild the bundle")
        try:
            with np.load(path, allow_pickle=False) as state:
                columns, weights, intercept = state["columns"], state["weights"], state["intercept"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelFormatError(f"router state {path} is unreadable ({e}): rebuild the bundle") from e
        n = len(spec["labels"])
        if (weights.shape != (n, len(columns)) or intercept.shape != (n,)
                or (len(columns) and (columns.min() < 0 or columns.max() >= features.dim))):
            raise ModelFormatError(f"router state {path} does not fit its spec ({n} labels, {features.dim} "
                                   "features): rebuild the bundle")
        dense = np.zeros((n, features.dim), np.float32)  # (L, F)
        dense[:, columns] = weights
        return features, dense, intercept


@register_router
class LinearRouter(_HashedLinearRouter):
    """``"ngram-linear"``: multinomial logistic regression on hashed n-grams."""

    name = "ngram-linear"

    @classmethod
    def fit(cls, labels: list[str], x: Any, y: np.ndarray, features: HashedFeatures, *, seed: int = 0,
            C: float = 10.0, max_iter: int = 300, class_weight: str | None = "balanced", solver: str = "lbfgs",
            tol: float = 1e-4, **kw: Any) -> "LinearRouter":
        """Fit on features x: CSR (n, F) and label ids y: (n,)."""
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
        return cls(labels, features, coef, bias, **kw)

    @classmethod
    def load(cls, directory: Path, spec: dict[str, Any]) -> "LinearRouter":
        features, weights, intercept = cls._read_state(directory, spec)
        return cls(spec["labels"], features, weights, intercept,
                   min_confidence=spec.get("min_confidence", 0.0), fallback=spec.get("fallback"))


@register_router
class CentroidRouter(_HashedLinearRouter):
    """``"centroid"``: cosine similarity to each label's mean feature vector, softmax at a temperature."""

    name = "centroid"

    def __init__(self, labels: Sequence[str], features: HashedFeatures, centroids: np.ndarray, *,
                 temperature: float = 0.05, min_confidence: float = 0.0, fallback: str | None = None):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        super().__init__(labels, features, centroids, None, min_confidence=min_confidence, fallback=fallback)
        self.temperature = float(temperature)

    @property
    def scale(self) -> float:
        return 1.0 / self.temperature

    def _extra_spec(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @classmethod
    def fit(cls, labels: list[str], x: Any, y: np.ndarray, features: HashedFeatures, *, seed: int = 0,
            temperature: float = 0.05, **kw: Any) -> "CentroidRouter":
        """Centroids of the L2-normalised rows of x: CSR (n, F) per label id in y: (n,)."""
        centroids = np.zeros((len(labels), features.dim), np.float32)  # (L, F)
        for i in range(len(labels)):
            mean = np.asarray(x[y == i].mean(axis=0)).ravel()  # (F,)
            norm = float(np.linalg.norm(mean))
            centroids[i] = mean / norm if norm > 0 else mean
        return cls(labels, features, centroids, temperature=temperature, **kw)

    @classmethod
    def load(cls, directory: Path, spec: dict[str, Any]) -> "CentroidRouter":
        features, weights, _ = cls._read_state(directory, spec)
        return cls(spec["labels"], features, weights, temperature=spec.get("temperature", 0.05),
                   min_confidence=spec.get("min_confidence", 0.0), fallback=spec.get("fallback"))


# --------------------------------------------------------------------------- training


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
    cls = ROUTERS[kind]
    if not hasattr(cls, "fit"):
        raise ConfigError(f"router type {kind!r} cannot be trained from texts")
    fit_options = [p.name for p in inspect.signature(cls.fit).parameters.values()
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
    return cls.fit(labels, x, y, features, seed=seed, min_confidence=min_confidence, fallback=fallback,
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


def texts_by_domain(corpus_dirs: Mapping[str, str | Path], split: str) -> dict[str, list[str]]:
    """``{domain: texts of split}`` for built corpora (directories from ``edge-downscale data build``).

    A value that is a demo domain's name (``"code"``) is that demo corpus, built into the cache on
    first use, as everywhere else in the library (:func:`edge_downscale.data.resolve_corpus`).
    """
    from ..data import iter_texts, resolve_corpus

    return {domain: [t for t in iter_texts(resolve_corpus(str(path)), split) if t]
            for domain, path in corpus_dirs.items()}
