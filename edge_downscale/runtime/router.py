"""Request routers: pick the ensemble member (a domain specialist) that should answer a request.

The ``route`` strategy of an ensemble sends each request to one member. The router that decides is
trained when the bundle is built (:mod:`edge_downscale.bundle.router`), from the same domain corpora
the members were specialised on, and runs offline, in about a millisecond on one CPU core, with numpy and scikit-learn's stateless
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
* **State**: :meth:`Router.save` writes one ``router.npz`` (numpy arrays only, readable with
  ``allow_pickle=False``: the non-zero columns of ``W`` and ``b``), atomically, and returns a small
  JSON-able spec (type, labels, feature parameters, fallback, file name and sha256) that the bundle's
  ``ensemble.json`` keeps under ``"router"``; :func:`load_router` reverses it.

Training and evaluation (:func:`edge_downscale.bundle.train_router`, ``evaluate_router``) are the
build side and live in :mod:`edge_downscale.bundle.router`; this module only loads and routes.
scikit-learn (a core dependency) is imported only when a router is loaded or routes.
"""
from __future__ import annotations

import abc
import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .._io import atomic_path, sha256_file
from ..config import StageConfig, check, registrar
from ..errors import ConfigError, ModelFormatError

__all__ = [
    "ROUTERS", "CentroidRouter", "HashedFeatures", "LinearRouter", "RouteDecision", "Router", "load_router",
    "register_router",
]

STATE_FILE = "router.npz"
STATE_VERSION = 1


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
    def load(cls, directory: Path, spec: dict[str, Any]) -> "CentroidRouter":
        features, weights, _ = cls._read_state(directory, spec)
        return cls(spec["labels"], features, weights, temperature=spec.get("temperature", 0.05),
                   min_confidence=spec.get("min_confidence", 0.0), fallback=spec.get("fallback"))
