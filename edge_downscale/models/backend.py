"""Open a model (registered name or path) as a scoring backend: torch or llama.cpp."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError
from .loader import resolve

if TYPE_CHECKING:
    from ..runtime.base import Backend


def _open_torch(ref, *, context_length: int, device: str, n_threads: int | None, batch_size: int) -> Backend:
    from .torch_backend import TorchBackend

    return TorchBackend.from_ref(ref, device=device, context_length=context_length, batch_size=batch_size)


def _open_llamacpp(ref, *, context_length: int, device: str, n_threads: int | None, batch_size: int) -> Backend:
    if ref.format != "gguf":
        raise ConfigError(f"the llamacpp backend needs a .gguf model; {ref.path} is {ref.format}")
    from ..runtime.llamacpp import LlamaCppBackend

    return LlamaCppBackend(ref.path, n_ctx=context_length, n_threads=n_threads)


OPENERS: dict[str, Callable[..., Backend]] = {"torch": _open_torch, "llamacpp": _open_llamacpp}


def open_backend(model: str, backend: str = "torch", *, context_length: int = 2048, device: str = "cpu",
                 n_threads: int | None = None, batch_size: int = 4) -> Backend:
    """Load ``model`` (name or path) with the named backend (``OPENERS``) for scoring."""
    if backend not in OPENERS:
        raise ConfigError(f"unknown backend {backend!r}; available: {', '.join(OPENERS)}")
    return OPENERS[backend](resolve(model), context_length=context_length, device=device, n_threads=n_threads,
                            batch_size=batch_size)
