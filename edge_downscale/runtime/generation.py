"""Text generation shared by every backend: prompts, chat templates, sampling, stop strings, usage.

A backend only has to run the model: :meth:`Backend._decode` yields the next-token logits after the
prompt and, for each token ``send()`` to it, the logits after that token (its KV cache carried
inside). Everything else is written once here, in numpy, so llama.cpp and onnxruntime members
sample, stop and report usage identically:

* **Prompt**: a string (prefixed with the model's BOS, as in training) or chat messages
  ``[{"role": "user", "content": "..."}]`` rendered with the model's own chat template (jinja2,
  sandboxed, as transformers does); a model without a template gets a plain ``Role: text`` layout
  and the response says so (``template="fallback"``).
* **Context policy** (``overflow``): when prompt + ``max_tokens`` exceeds the context, ``"truncate"``
  (default) drops the *oldest* prompt tokens (after the BOS/template start token) and reports how
  many in ``usage.truncated_tokens``; ``"error"`` refuses with :class:`ContextOverflowError`.
  ``max_tokens`` itself is capped at half the context so a prompt always keeps some room.
* **Sampling**: greedy at ``temperature=0``; otherwise temperature, then top-k, then top-p
  (nucleus) on the float64 softmax, drawn with a seeded numpy Generator (reproducible per seed).
* **Stop strings**: text is streamed as soon as it cannot be the start of a stop string; a stop
  string ends generation and is not returned. End-of-turn tokens (EOS, ``<|im_end|>`` ...) end it too.
* **Usage**: prompt/completion tokens, time to first token, latency, tokens/s and the energy of the
  request from an :mod:`~edge_downscale.runtime.energy` meter, always labelled with its source.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from ..config import StageConfig, check
from ..errors import ConfigError
from .energy import EnergyMeter, auto_meter, energy_fields

OVERFLOW_POLICIES = ("truncate", "error")
CHAT_ROLES = ("system", "user", "assistant", "tool")


class ContextOverflowError(ConfigError):
    """The prompt does not fit the model's context and the policy is ``overflow="error"``."""


@dataclasses.dataclass
class GenerationConfig(StageConfig):
    """How to generate. ``temperature=0`` is greedy; ``seed=None`` draws a fresh seed per request."""

    stage: ClassVar[str] = "generate"
    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None
    overflow: str = "truncate"

    def validate(self) -> None:
        check(isinstance(self.max_tokens, int) and self.max_tokens >= 1,
              f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        check(isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100
              and not math.isnan(self.temperature), f"temperature must be in [0, 100], got {self.temperature!r}")
        check(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}")
        check(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        check(all(isinstance(s, str) and s for s in self.stop), "stop must be a list of non-empty strings")
        check(self.overflow in OVERFLOW_POLICIES, f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {self.overflow!r}")

    @classmethod
    def build(cls, config: "GenerationConfig | None" = None, **options: Any) -> "GenerationConfig":
        """``config`` (default: the defaults) with the fields named in ``options`` replaced, validated.

        ``generate(prompt, max_tokens=64)`` and ``generate(prompt, GenerationConfig(max_tokens=64))`` are
        the same request; an unknown option is a ConfigError that lists the fields.
        """
        if config is not None and not isinstance(config, cls):
            raise ConfigError(f"expected a GenerationConfig, got {type(config).__name__}")
        base = config if config is not None else cls()
        return cls.from_dict({**base.to_dict(), **options}) if options else base


@dataclasses.dataclass
class Usage:
    """What one request cost. ``joules`` is None only when no meter was given (never a silent 0)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_tokens: int = 0
    ttft_s: float | None = None
    latency_s: float = 0.0
    tokens_per_s: float | None = None
    joules: float | None = None
    energy_source: str | None = None
    grams_co2: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add(self, other: "Usage") -> "Usage":
        """Sum of two requests' usage (a cascade's levels, a vote's members); sources are joined."""
        joules = None if self.joules is None and other.joules is None else (self.joules or 0.0) + (other.joules or 0.0)
        sources = sorted({s for s in (self.energy_source, other.energy_source) if s})
        grams = None if self.grams_co2 is None and other.grams_co2 is None else (self.grams_co2 or 0.0) + (other.grams_co2 or 0.0)
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                     self.truncated_tokens + other.truncated_tokens, self.ttft_s if self.ttft_s is not None else other.ttft_s,
                     self.latency_s + other.latency_s, None, joules, "+".join(sources) or None, grams)


@dataclasses.dataclass
class Generation:
    """A finished generation. ``logprobs[i]`` is the model's log-probability of generated token i."""

    text: str
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (stop string or end-of-turn token) | "length" (max_tokens or context full)
    usage: Usage
    template: str | None = None  # "model" | "fallback" for chat prompts, None for plain text

    @property
    def mean_logprob(self) -> float | None:
        return float(np.mean(self.logprobs)) if self.logprobs else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean_logprob"] = self.mean_logprob
        return d


@dataclasses.dataclass
class Chunk:
    """One streamed piece of text; the last chunk has ``final`` set to the whole :class:`Generation`."""

    text: str
    final: Generation | None = None


@dataclasses.dataclass
class Scored:
    """Token log-probabilities of a text: ``logprobs[i] = log p(tokens[i] | BOS, tokens[:i])``."""

    tokens: list[int]
    logprobs: np.ndarray  # (n,) float64
    n_bytes: int
    truncated_tokens: int = 0

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())

    @property
    def mean(self) -> float:
        return float(self.logprobs.mean()) if len(self.logprobs) else 0.0

    @property
    def bits_per_byte(self) -> float:
        return -self.total / math.log(2) / max(self.n_bytes, 1)


# --- prompts ----------------------------------------------------------------------------------

def check_messages(messages: Any) -> list[dict[str, str]]:
    """Validate chat messages (a non-empty list of {"role", "content"} dicts with known roles)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConfigError('chat messages must be a non-empty list like [{"role": "user", "content": "..."}]')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f'message {i} must be {{"role": str, "content": str}}, got {m!r:.80}')
        if m["role"] not in CHAT_ROLES:
            raise ConfigError(f"message {i}: unknown role {m['role']!r}; use one of {', '.join(CHAT_ROLES)}")
    return [dict(m) for m in messages]


_TEMPLATES: dict[str, Any] = {}
_TEMPLATES_LOCK = threading.Lock()


def render_chat(template: str | None, messages: Sequence[dict[str, str]], *, bos_token: str = "",
                eos_token: str = "") -> tuple[str, str]:
    """(prompt text, "model" | "fallback"): the messages in the model's chat template, ready to answer.

    The template runs in jinja2's immutable sandbox (templates come with model files: they must not
    reach Python objects). Without a template: ``System: ...\\nUser: ...\\nAssistant:``.
    """
    messages = check_messages(messages)
    if not template:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:", "fallback"
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 is a core dependency
        raise ConfigError("rendering a chat template needs jinja2: pip install jinja2") from None
    with _TEMPLATES_LOCK:
        compiled = _TEMPLATES.get(template)
        if compiled is None:
            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
            try:
                compiled = _TEMPLATES[template] = env.from_string(template)
            except jinja2.exceptions.TemplateError as e:
                raise ConfigError(f"the model's chat template does not compile ({e}); pass a plain prompt instead") from e
    try:
        text = compiled.render(messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
    except jinja2.exceptions.TemplateError as e:
        raise ConfigError(f"the model's chat template refused these messages: {e}") from e
    return text, "model"


def fit_context(ids: list[int], keep_head: int, room: int, overflow: str) -> tuple[list[int], int]:
    """(ids that fit in ``room`` tokens, how many were dropped): drop the oldest after ``keep_head``."""
    if len(ids) <= room:
        return ids, 0
    if overflow == "error":
        raise ContextOverflowError(f"the prompt has {len(ids)} tokens but only {room} fit with max_tokens; "
                                   "shorten it, lower max_tokens or use overflow='truncate'")
    keep_head = min(keep_head, room // 2)
    dropped = len(ids) - room
    return ids[:keep_head] + ids[keep_head + dropped:], dropped


# --- sampling ---------------------------------------------------------------------------------

def sample_token(logits: np.ndarray, cfg: GenerationConfig, rng: np.random.Generator) -> int:
    """Pick the next token from logits (V,): greedy, or temperature -> top-k -> top-p -> draw."""
    if cfg.temperature == 0:
        return int(np.argmax(logits))
    x = np.asarray(logits, dtype=np.float64) / cfg.temperature  # (V,)
    if 0 < cfg.top_k < x.shape[0]:
        kth = np.partition(x, -cfg.top_k)[-cfg.top_k]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x - x.max())
    p /= p.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-p)  # (V,) most likely first
        cum = np.cumsum(p[order])
        cutoff = int(np.searchsorted(cum, cfg.top_p)) + 1  # smallest prefix with mass >= top_p
        keep = order[:cutoff]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(min(np.searchsorted(np.cumsum(p), rng.random() * p.sum()), p.shape[0] - 1))


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token] for one row (V,)."""
    x = np.asarray(logits, dtype=np.float32)
    m = float(x.max())
    return float(x[token]) - m - math.log(float(np.exp(x - m).sum(dtype=np.float64)))


class IncrementalText:
    """Detokenizes a growing token list with a short window instead of the whole list every step.

    Text is decoded from a few tokens back (``prefix``) so that tokenizers whose pieces depend on
    their left neighbour (leading spaces, multi-byte characters split across tokens) come out as
    in a full decode; nothing is released while the tail is an incomplete character (U+FFFD).
    """

    def __init__(self, backend):
        self.detokenize = backend.detokenize
        self.prefix = 0  # tokens[prefix:read] decode to text already released
        self.read = 0

    def add(self, tokens: list[int]) -> str:
        """New text after ``tokens[-1]`` was appended ("" while a character is incomplete)."""
        before = self.detokenize(tokens[self.prefix:self.read]) if self.read > self.prefix else ""
        after = self.detokenize(tokens[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(tokens)
        return after[len(before):]


class StopMatcher:
    """Releases streamed text that cannot be the start of a stop string; finds stop strings."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def split(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, stopped). ``text`` is all text not yet emitted."""
        if self.stops:
            hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
            if hits:
                return text[: min(hits)], True
            for k in range(min(self.hold, len(text)), 0, -1):  # longest tail that starts a stop string
                tail = text[-k:]
                if any(s.startswith(tail) for s in self.stops):
                    return text[:-k], False
        return text, False


# --- the loop ---------------------------------------------------------------------------------

_DEFAULT_METER: EnergyMeter | None = None
_METER_LOCK = threading.Lock()


def default_meter() -> EnergyMeter:
    """The process-wide meter (NVML, else RAPL, else the CPU-time estimate), created once."""
    global _DEFAULT_METER
    with _METER_LOCK:
        if _DEFAULT_METER is None:
            _DEFAULT_METER = auto_meter()
        return _DEFAULT_METER


def stream_tokens(backend, prompt_ids: list[int], cfg: GenerationConfig, *, meter: EnergyMeter | None,
                  grid_g_per_kwh: float = 400.0, truncated: int = 0, template: str | None = None) -> Iterator[Chunk]:
    """The decode loop: sample, detokenize incrementally, stop, and finish with a :class:`Generation`."""
    rng = np.random.default_rng(cfg.seed)
    stopper = StopMatcher(cfg.stop)
    end_ids = set(backend.end_ids)
    max_new = min(cfg.max_tokens, backend.context_length - len(prompt_ids))
    t0 = time.perf_counter()
    token_ = meter.start() if meter is not None else None
    tokens: list[int] = []
    logprobs: list[float] = []
    text = IncrementalText(backend)
    pending, emitted, finish, ttft = "", "", "length", None  # pending: decoded, held back by the stop matcher
    steps = backend._decode(prompt_ids)
    try:
        logits = next(steps)  # (V,) after the prompt
        while len(tokens) < max_new:
            tok = sample_token(logits, cfg, rng)
            if ttft is None:
                ttft = time.perf_counter() - t0
            if tok in end_ids:
                finish = "stop"
                break
            tokens.append(tok)
            logprobs.append(token_logprob(logits, tok))
            pending += text.add(tokens)
            safe, stopped = stopper.split(pending)
            if safe:
                emitted += safe
                pending = pending[len(safe):]
                yield Chunk(safe)
            if stopped:
                finish = "stop"
                break
            if len(tokens) < max_new:
                logits = steps.send(tok)
    finally:
        steps.close()
    if finish == "length" and pending:  # flush what the stop matcher held back
        emitted += pending
        yield Chunk(pending)
    latency = time.perf_counter() - t0
    measurement = meter.stop(token_) if meter is not None else None
    usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(tokens), truncated_tokens=truncated,
                  ttft_s=ttft, latency_s=latency,
                  tokens_per_s=(len(tokens) - 1) / (latency - ttft) if ttft is not None and len(tokens) > 1 and latency > ttft else None,
                  **energy_fields(measurement, grid_g_per_kwh))
    yield Chunk("", Generation(emitted, tokens, logprobs, finish, usage, template))


def collect(chunks: Iterator[Chunk]) -> Generation:
    """Run a stream to its end and return the final :class:`Generation`."""
    final = None
    for chunk in chunks:
        final = chunk.final or final
    assert final is not None
    return final
