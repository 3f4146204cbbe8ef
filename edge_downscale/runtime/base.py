"""The backend interface every model runner implements (llama.cpp, onnxruntime, torch).

Kept free of torch/transformers: apps import the runtime without them. A backend that can score
text (``"logprobs"`` capability) is all evaluation needs: bits-per-byte, multiple choice and parity
checks are written once against :meth:`Backend.token_logprobs`. A backend that can also decode
(``"generate"``) implements :meth:`Backend._decode`; prompts, chat templates, sampling, stop strings,
streaming and usage are then shared (:mod:`~edge_downscale.runtime.generation`).

Every public call takes the backend's lock: one backend serves many threads, one request at a time.
"""
from __future__ import annotations

import abc
import importlib
import threading
from pathlib import Path
from typing import Any, ClassVar, Generator, Iterator, Sequence

import numpy as np

from ..artifacts import artifact_format, model_file
from ..errors import ConfigError
from .generation import (Chunk, ContextOverflowError, Generation, GenerationConfig, Scored, check_messages, collect,
                         default_meter, fit_context, render_chat, stream_tokens)

_USE_DEFAULT = object()
# Special tokens that end an assistant turn in common chat formats (ChatML, Gemma, Llama 3, Phi).
END_OF_TURN_TEXTS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>")
_LOCKS_GUARD = threading.Lock()


class Backend(abc.ABC):
    """A loaded model that tokenizes and scores token sequences."""

    name: ClassVar[str] = "backend"
    # "logprobs" (token_logprobs), "logits", "generate"/"streaming" (_decode), "chat" (a chat template), "gpu"
    capabilities: ClassVar[frozenset[str]] = frozenset({"logprobs"})
    context_length: int = 2048

    @abc.abstractmethod
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of ``text``, no BOS added; ``special=True`` parses special-token text (chat prompts)."""

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

    # --- generation (capability "generate") ---------------------------------------------------

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens omitted); an incomplete UTF-8 tail shows as U+FFFD."""
        raise NotImplementedError(f"the {self.name} backend cannot detokenize")

    @property
    def end_ids(self) -> frozenset[int]:
        """Tokens that end a generation: EOS and end-of-turn tokens."""
        return frozenset()

    @property
    def chat_template(self) -> str | None:
        """The model's jinja2 chat template, if it ships one."""
        return None

    @property
    def special_tokens(self) -> dict[str, str]:
        """``bos_token``/``eos_token`` text for chat templates."""
        return {}

    def _decode(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        """Yield next-token logits (V,) after ``prompt_ids``, then after each token sent in."""
        raise NotImplementedError(f"the {self.name} backend cannot generate")

    @property
    def lock(self) -> threading.RLock:
        """This backend's lock (created on first use): native contexts are not re-entrant."""
        lock = self.__dict__.get("_backend_lock")
        if lock is None:
            with _LOCKS_GUARD:
                lock = self.__dict__.setdefault("_backend_lock", threading.RLock())
        return lock

    def prompt_ids(self, prompt: str | Sequence[dict[str, str]], max_tokens: int,
                   overflow: str = "truncate") -> tuple[list[int], int, str | None]:
        """(token ids, tokens dropped to fit, chat template used) for a prompt or chat messages.

        Room for the prompt is ``context_length - min(max_tokens, context_length // 2)``. A plain
        prompt loses its oldest tokens after BOS; chat messages lose their oldest non-system
        messages first (the last one is always kept), then the oldest tokens.
        """
        room = self.context_length - min(max_tokens, self.context_length // 2)
        if isinstance(prompt, str):
            ids = self.prefix_ids + self.tokenize(prompt)
            fitted, dropped = fit_context(ids, len(self.prefix_ids), room, overflow)
            return fitted, dropped, None
        messages = check_messages(prompt)
        specials = self.special_tokens
        full = None  # token count of the whole conversation
        while True:
            text, template = render_chat(self.chat_template, messages, **specials)
            ids = self.tokenize(text, special=True)
            full = len(ids) if full is None else full
            droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
            if len(ids) <= room or not droppable or overflow == "error":
                break
            messages = messages[: droppable[0]] + messages[droppable[0] + 1:]
        fitted, _ = fit_context(ids, 0, room, overflow)
        return fitted, full - len(fitted), template

    def generate(self, prompt: str | Sequence[dict[str, str]], config: GenerationConfig | None = None, *,
                 stream: bool = False, meter: Any = _USE_DEFAULT, grid_g_per_kwh: float = 400.0,
                 **options: Any) -> Generation | Iterator[Chunk]:
        """Generate from a prompt or chat messages; a :class:`Generation`, or chunks when ``stream``.

        ``config``: a :class:`~edge_downscale.runtime.generation.GenerationConfig`; ``options``
        (``max_tokens=64``, ``temperature``...) replace its fields. ``meter``: an
        :class:`~edge_downscale.runtime.energy.EnergyMeter` (default: the process-wide
        :func:`~edge_downscale.runtime.generation.default_meter`), or None to skip metering.
        """
        if "generate" not in self.capabilities:
            raise ConfigError(f"the {self.name} backend cannot generate; use llamacpp or onnx")
        cfg = GenerationConfig.build(config, **options)
        meter = default_meter() if meter is _USE_DEFAULT else meter
        chunks = self._locked_stream(prompt, cfg, meter, grid_g_per_kwh)
        return chunks if stream else collect(chunks)

    def _locked_stream(self, prompt, cfg: GenerationConfig, meter, grid: float) -> Iterator[Chunk]:
        with self.lock:
            ids, dropped, template = self.prompt_ids(prompt, cfg.max_tokens, cfg.overflow)
            yield from stream_tokens(self, ids, cfg, meter=meter, grid_g_per_kwh=grid, truncated=dropped,
                                     template=template)

    # --- scoring (capability "logprobs") -------------------------------------------------------

    def score(self, text: str) -> Scored:
        """Log-probability of every token of ``text`` after BOS; only the last tokens that fit are scored."""
        ids = self.tokenize(text)
        if not ids:
            raise ConfigError("cannot score an empty text")
        room = self.context_length - len(self.prefix_ids)
        kept = ids[-room:]
        with self.lock:
            (lp,) = self.token_logprobs([self.prefix_ids + kept])
        n_bytes = len(text.encode("utf-8")) if len(kept) == len(ids) else len(self.detokenize(kept).encode("utf-8"))
        return Scored(kept, np.asarray(lp, dtype=np.float64), n_bytes, len(ids) - len(kept))

    def option_sequences(self, context: str, options: Sequence[str], max_length: int) -> tuple[list[list[int]], list[int]]:
        """(context + option token ids per option, option lengths): each option tokenized alone after the
        context, whose oldest tokens (after the prefix) are dropped so the sequence fits ``max_length``."""
        prefix = self.prefix_ids
        ctx = prefix + self.tokenize(context)
        seqs, n_opt = [], []
        for option in options:
            opt = self.tokenize(option)
            if not opt:
                raise ConfigError(f"option {option!r} has no tokens")
            room = max_length - len(opt)
            if room <= len(prefix):
                raise ContextOverflowError(f"option of {len(opt)} tokens does not fit the context of {max_length}")
            seqs.append((ctx if len(ctx) <= room else prefix + ctx[len(ctx) - room + len(prefix):]) + opt)
            n_opt.append(len(opt))
        return seqs, n_opt

    def option_logprobs(self, context: str, options: Sequence[str], *, max_length: int | None = None) -> np.ndarray:
        """Summed log-probability of each option's tokens after ``context``: (n_options,) float64.

        Options are tokenized on their own (as in multiple-choice evaluation); when context + option
        is too long, the oldest context tokens are dropped (BOS kept).
        """
        if not options:
            raise ConfigError("no options to score")
        max_length = min(max_length or self.context_length, self.context_length)
        seqs, n_opt = self.option_sequences(context, options, max_length)
        with self.lock:
            lps = self.token_logprobs(seqs)
        return np.array([lp[-n:].sum() for lp, n in zip(lps, n_opt)], dtype=np.float64)  # (n_options,)

    def close(self) -> None:
        """Release native resources (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The device backends, name -> "module:Class", imported on first use (llama_cpp and onnxruntime are
# extras). The torch backend is build-time only: edge_downscale.models.open_backend opens it.
BACKENDS: dict[str, str] = {
    "llamacpp": "edge_downscale.runtime.llamacpp:LlamaCppBackend",
    "onnx": "edge_downscale.runtime.onnx:OnnxBackend",
}


def backend_class(name: str) -> type[Backend]:
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}") from None
    return getattr(importlib.import_module(module), cls)


# artifact format (edge_downscale.artifacts.MODEL_FILES) -> the backend that runs it
FORMAT_BACKENDS: dict[str, str] = {"gguf": "llamacpp", "onnx": "onnx"}
BACKEND_FORMATS: dict[str, str] = {b: f for f, b in FORMAT_BACKENDS.items()}


def artifact_backend(artifact_dir: str | Path) -> str:
    """``llamacpp`` for an export directory holding model.gguf, ``onnx`` for model.onnx."""
    return FORMAT_BACKENDS[artifact_format(artifact_dir)]


def open_artifact(artifact_dir: str | Path, backend: str | None = None, **options: Any) -> Backend:
    """Open an export directory with the backend for its model file (``model.gguf`` -> llamacpp, ``model.onnx``
    -> onnx), or with ``backend``; ``options`` go to the backend (``n_ctx``, ``n_threads``, ``device``...)."""
    if backend is not None and backend not in BACKEND_FORMATS:
        raise ConfigError(f"backend {backend!r} does not run exported artifacts; use one of "
                          f"{', '.join(BACKEND_FORMATS)}")
    backend = backend or artifact_backend(artifact_dir)
    return backend_class(backend)(model_file(artifact_dir, BACKEND_FORMATS[backend]), **options)


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
