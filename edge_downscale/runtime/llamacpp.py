"""llama.cpp backend (GGUF) through llama-cpp-python. CPU threads and GPU offload configurable."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Generator, Sequence

import numpy as np

from ..errors import require
from .gguf_file import check_gguf
from .generation import ContextOverflowError
from .base import END_OF_TURN_TEXTS, Backend, log_softmax_gather


class LlamaCppBackend(Backend):
    name = "llamacpp"
    capabilities = frozenset({"logprobs", "logits", "generate", "streaming", "chat", "gpu"})

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

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    @property
    def end_ids(self) -> frozenset[int]:
        ids = {self._llm.token_eos(), self._llm._model.token_eot()}
        for text in END_OF_TURN_TEXTS:
            tok = self.tokenize(text, special=True)
            if len(tok) == 1:
                ids.add(tok[0])
        return frozenset(i for i in ids if i is not None and i >= 0)

    @property
    def chat_template(self) -> str | None:
        return self._llm.metadata.get("tokenizer.chat_template") or None

    @property
    def special_tokens(self) -> dict[str, str]:
        out = {}
        for key, tid in (("bos_token", self._llm.token_bos()), ("eos_token", self._llm.token_eos())):
            if tid >= 0:
                out[key] = self._llm._model.token_get_text(tid)
        return out

    def _decode(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        """Prompt, then one token a step, on llama.cpp's own KV cache.

        Logits are computed for the last position only (as plain llama-cpp-python generation does),
        not for every prompt token as scoring needs: ``_logits_all`` is switched off meanwhile and the
        row read from the context (pinned llama-cpp-python 0.3.36 internals).
        """
        llm = self._llm
        n_vocab = llm.n_vocab()
        llm.reset()
        saved, llm._logits_all = llm._logits_all, False
        try:
            tokens = list(prompt_ids)
            while True:
                if llm.n_tokens + len(tokens) > self.context_length:
                    raise ContextOverflowError(f"decoding past the context length {self.context_length}")
                llm.eval(tokens)
                logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).copy()  # (V,)
                tokens = [(yield logits)]
        finally:
            llm._logits_all = saved
            llm.reset()

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
