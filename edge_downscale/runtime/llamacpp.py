"""llama.cpp backend (GGUF) through llama-cpp-python: threads, batch sizes, flash attention, mmap, GPU offload.

Every setting not given falls back to :data:`DEFAULTS`; ``edge-downscale bench --tune``
(:mod:`~edge_downscale.runtime.tune`) measures the tunable ones on a device and writes the best into a
bundle's member options, which reach this constructor as keyword arguments.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np

from ..config import is_int
from ..errors import ConfigError, require
from .gguf_file import check_gguf
from .generation import ContextOverflowError
from .base import END_OF_TURN_TEXTS, Backend, log_softmax_gather


# The settings a backend gets when neither the caller nor a bundle member's options give them: the
# one place to change a default. None threads: one per CPU (os.cpu_count()).
DEFAULTS: dict[str, Any] = {
    "n_ctx": 2048,
    "n_threads": None,  # decode threads
    "n_threads_batch": None,  # prompt (batch) threads
    "n_batch": 512,  # logical batch: prompt tokens per llama_decode call (capped at n_ctx)
    "n_ubatch": 512,  # physical batch: tokens per compute graph (capped at n_batch)
    "flash_attn": False,
    "use_mmap": True,  # map the file instead of reading it into memory
    "n_gpu_layers": 0,  # -1: all
    "seed": 0,
}
_POSITIVE = ("n_ctx", "n_threads", "n_threads_batch", "n_batch", "n_ubatch")
_FLAGS = ("flash_attn", "use_mmap")


def resolve_settings(**given: Any) -> dict[str, Any]:
    """``given`` (None = not given) over :data:`DEFAULTS`, validated, as llama.cpp receives them.

    Threads left at None become one per CPU; ``n_batch`` is capped at ``n_ctx`` and ``n_ubatch`` at
    ``n_batch`` (as llama-cpp-python does).
    """
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown llama.cpp setting(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}")
    s = {k: given[k] if given.get(k) is not None else v for k, v in DEFAULTS.items()}
    for k in ("n_threads", "n_threads_batch"):
        s[k] = s[k] if s[k] is not None else (os.cpu_count() or 1)
    for k in _POSITIVE:
        if not (is_int(s[k]) and s[k] >= 1):
            raise ConfigError(f"llama.cpp {k} must be an integer >= 1, got {s[k]!r}")
    for k in _FLAGS:
        if not isinstance(s[k], bool):
            raise ConfigError(f"llama.cpp {k} must be true or false, got {s[k]!r}")
    if not (is_int(s["n_gpu_layers"]) and s["n_gpu_layers"] >= -1):
        raise ConfigError(f"llama.cpp n_gpu_layers must be an integer >= -1 (-1: all), got {s['n_gpu_layers']!r}")
    if not is_int(s["seed"]):
        raise ConfigError(f"llama.cpp seed must be an integer, got {s['seed']!r}")
    s["n_batch"] = min(s["n_batch"], s["n_ctx"])
    s["n_ubatch"] = min(s["n_ubatch"], s["n_batch"])
    return s


class LlamaCppBackend(Backend):
    name = "llamacpp"
    capabilities = frozenset({"logprobs", "logits", "generate", "streaming", "chat", "gpu"})

    def __init__(self, model_path: str | Path, *, n_ctx: int | None = None, n_threads: int | None = None,
                 n_threads_batch: int | None = None, n_gpu_layers: int | None = None, n_batch: int | None = None,
                 n_ubatch: int | None = None, flash_attn: bool | None = None, use_mmap: bool | None = None,
                 seed: int | None = None):
        """Load ``model_path``; a setting left at None comes from :data:`DEFAULTS`."""
        settings = resolve_settings(n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch,
                                    n_gpu_layers=n_gpu_layers, n_batch=n_batch, n_ubatch=n_ubatch,
                                    flash_attn=flash_attn, use_mmap=use_mmap, seed=seed)
        # Validate in Python first: llama.cpp aborts or hangs on a damaged file.
        check_gguf(model_path, parse=True)
        llama_cpp = require("llama_cpp", "llama")
        self.model_path = Path(model_path)
        self.settings = settings  # what llama.cpp was given
        self._llm = llama_cpp.Llama(model_path=str(model_path), **settings, logits_all=True, verbose=False)
        self.context_length = settings["n_ctx"]

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
