"""llama.cpp backend (GGUF) through llama-cpp-python. CPU threads and GPU offload configurable."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import require
from ..models.gguf_file import check_gguf
from .base import Backend, log_softmax_gather


class LlamaCppBackend(Backend):
    name = "llamacpp"
    capabilities = frozenset({"logprobs", "logits", "streaming", "gpu"})

    def __init__(self, model_path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
                 n_gpu_layers: int = 0, n_batch: int = 512, seed: int = 0):
        # Validate in Python first: llama.cpp aborts or hangs on a damaged file.
        check_gguf(model_path, parse=True)
        llama_cpp = require("llama_cpp", "llama")
        self.model_path = Path(model_path)
        self._llm = llama_cpp.Llama(
            model_path=str(model_path), n_ctx=n_ctx, n_batch=min(n_batch, n_ctx),
            n_threads=n_threads or os.cpu_count(), n_gpu_layers=n_gpu_layers,
            logits_all=True, seed=seed, verbose=False,
        )
        self.context_length = n_ctx

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    @property
    def prefix_ids(self) -> list[int]:
        bos = self._llm.token_bos()
        return [bos if bos >= 0 else self._llm.token_eos()]

    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        out = []
        for ids in sequences:
            ids = list(ids)
            self._llm.reset()
            self._llm.eval(ids)
            logits = np.asarray(self._llm.scores[: len(ids) - 1])  # (n-1, V)
            out.append(log_softmax_gather(logits, np.asarray(ids[1:])))
        return out

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        ids = list(ids)
        self._llm.reset()
        self._llm.eval(ids)
        return np.array(self._llm.scores[: len(ids)], dtype=np.float32)  # (T, V), a copy

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()
