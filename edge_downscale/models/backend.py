"""Open a model (registered name or path) as a scoring backend: torch or llama.cpp."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .loader import resolve

if TYPE_CHECKING:
    from ..runtime.base import Backend


def open_backend(model: str, backend: str = "torch", *, context_length: int = 2048, device: str = "cpu",
                 n_threads: int | None = None, batch_size: int = 4) -> Backend:
    """Load ``model`` (name or path) with the named backend for scoring."""
    ref = resolve(model)
    if backend == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend.from_ref(ref, device=device, context_length=context_length, batch_size=batch_size)
    if backend == "llamacpp":
        if ref.format != "gguf":
            raise ConfigError(f"the llamacpp backend needs a .gguf model; {model} is {ref.format}")
        from ..runtime.llamacpp import LlamaCppBackend

        return LlamaCppBackend(ref.path, n_ctx=context_length, n_threads=n_threads)
    raise ConfigError(f"unknown backend {backend!r}; available: torch, llamacpp")
