"""The backend interface every model runner implements (llama.cpp, onnxruntime, torch).

Kept free of torch/transformers: apps import the runtime without them. A backend that can score
text (``"logprobs"`` capability) is all evaluation needs: bits-per-byte, multiple choice and parity
checks are written once against :meth:`Backend.token_logprobs`.
"""
from __future__ import annotations

import abc
import importlib
from typing import ClassVar, Sequence

import numpy as np

from ..errors import ConfigError


class Backend(abc.ABC):
    """A loaded model that tokenizes and scores token sequences."""

    name: ClassVar[str] = "backend"
    capabilities: ClassVar[frozenset[str]] = frozenset({"logprobs"})  # also: "streaming", "gpu"
    context_length: int = 2048

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens."""

    @property
    @abc.abstractmethod
    def prefix_ids(self) -> list[int]:
        """Ids that start a document (BOS, else EOS): the first real token is predicted from them."""

    @abc.abstractmethod
    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each sequence ``s`` (len n <= context_length), ``log p(s[i+1] | s[:i+1])``, shape (n-1,)."""

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids``: (len(ids), vocab) float32.

        Optional (capability ``"logits"``): parity checks use it for the KL divergence between a
        source model and its export.
        """
        raise NotImplementedError(f"the {self.name} backend does not return full logits")

    def close(self) -> None:
        """Release native resources (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# name -> "module:Class"; imported on first use so a registry lookup never pulls in torch.
BACKENDS: dict[str, str] = {
    "llamacpp": "edge_downscale.runtime.llamacpp:LlamaCppBackend",
    "onnx": "edge_downscale.runtime.onnx:OnnxBackend",
    "torch": "edge_downscale.models.torch_backend:TorchBackend",
}


def backend_class(name: str) -> type[Backend]:
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}") from None
    return getattr(importlib.import_module(module), cls)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64.  logits: (T, V) -> (T, V)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)  # (T, 1)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def log_softmax_gather(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``log_softmax(logits)[i, targets[i]]``, stable.  logits: (T, V), targets: (T,) -> (T,) float64.

    exp runs in float32 (a 49k-wide vocabulary makes float64 cost ~1 s per 512 tokens); the sums and
    the result are float64.
    """
    x = np.asarray(logits, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)  # (T, 1)
    sumexp = np.exp(x - m).sum(axis=-1, dtype=np.float64)  # (T,)
    picked = x[np.arange(len(targets)), targets].astype(np.float64) - m[:, 0].astype(np.float64)
    return picked - np.log(sumexp)
