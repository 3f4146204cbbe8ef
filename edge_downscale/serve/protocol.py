"""The OpenAI wire format: request validation (caps included) and response / chunk / error bodies.

Only what the runtime can honour is accepted; anything else is a ``400`` naming the parameter
(``n > 1``, tools, penalties, ``top_logprobs``...), never a silent default. Extensions: ``usage``
carries an ``energy`` object, and every completion (the last streamed chunk too) an ``ensemble``
object saying which member(s) answered and why.
"""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from ..config import is_int, is_number
from ..errors import EdgeDownscaleError
from ..runtime.generation import CHAT_ROLES, GenerationConfig
from .config import ServeConfig


class RequestError(EdgeDownscaleError):
    """A request the server refuses; ``status``/``code``/``param`` go into the OpenAI error body."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(str(self), self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n", "user",
          "presence_penalty", "frequency_penalty", "logit_bias", "logprobs"}
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "response_format",
                 "parallel_tool_calls", "store", "metadata"}
COMPLETION = COMMON | {"prompt", "echo", "best_of", "suffix"}


@dataclasses.dataclass
class ParsedRequest:
    kind: str  # "chat" | "completion"
    model: str
    prompt: Any  # str (completion) or messages (chat)
    config: GenerationConfig
    stream: bool
    logprobs: bool
    prompt_chars: int
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


def _fail(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(message, param=param, code=code)


def _content(value: Any, i: int) -> str:
    """A message's content: a string or a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                       for p in value):
        return "".join(p["text"] for p in value)
    raise _fail(f"messages[{i}].content must be a string or a list of text parts (images and audio are not supported)",
                f"messages[{i}].content")


def parse(body: Any, kind: str, config: ServeConfig) -> ParsedRequest:
    """Validate an OpenAI request body (already JSON-decoded) against the server's caps."""
    if not isinstance(body, dict):
        raise _fail("the request body must be a JSON object")
    unknown = sorted(set(body) - (CHAT if kind == "chat" else COMPLETION))
    if unknown:
        raise _fail(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0], "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model is required: the bundle's name (the ensemble decides) or a member's name "
                    "(GET /v1/models lists them)", "model")
    for name, ok in (("n", lambda v: v == 1), ("presence_penalty", lambda v: v == 0), ("frequency_penalty", lambda v: v == 0),
                     ("logit_bias", lambda v: not v), ("tools", lambda v: not v), ("echo", lambda v: v is False),
                     ("best_of", lambda v: v == 1), ("suffix", lambda v: v is None),
                     ("response_format", lambda v: isinstance(v, dict) and v.get("type") == "text")):
        if body.get(name) is not None and not ok(body[name]):
            raise _fail(f"{name}={body[name]!r} is not supported by this server", name, "unsupported_value")

    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _fail('messages must be a non-empty list like [{"role": "user", "content": "..."}]', "messages")
        prompt = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
                raise _fail(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}", f"messages[{i}].role")
            prompt.append({"role": m["role"], "content": _content(m.get("content"), i)})
        chars = sum(len(m["content"]) for m in prompt)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise _fail("prompt must be a non-empty string (one prompt per request)", "prompt")
        chars = len(prompt)
    if chars > config.max_prompt_chars:
        raise _fail(f"the prompt has {chars} characters; this server accepts at most {config.max_prompt_chars}",
                    "messages" if kind == "chat" else "prompt", "prompt_too_long")

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = config.default_max_tokens
    if not is_int(max_tokens) or max_tokens < 1:
        raise _fail(f"{param} must be an integer >= 1, got {max_tokens!r}", param)
    if max_tokens > config.max_tokens_limit:
        raise _fail(f"{param}={max_tokens} is over this server's limit of {config.max_tokens_limit}", param,
                    "max_tokens_too_large")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not is_number(temperature) or not 0 <= temperature <= 2:
        raise _fail(f"temperature must be a number in [0, 2], got {temperature!r}", "temperature")
    top_p = body.get("top_p", 1.0)
    if top_p is None:
        top_p = 1.0
    if not is_number(top_p) or not 0 < top_p <= 1:
        raise _fail(f"top_p must be a number in (0, 1], got {top_p!r}", "top_p")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise _fail("stop must be a non-empty string or a list of at most 4 of them", "stop")
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        raise _fail(f"seed must be an integer, got {seed!r}", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _fail("stream must be true or false", "stream")
    logprobs = body.get("logprobs")
    if kind == "chat":
        if logprobs is not None and not isinstance(logprobs, bool):
            raise _fail("logprobs must be true or false", "logprobs")
        if body.get("top_logprobs"):
            raise _fail("top_logprobs is not supported: logprobs=true returns each sampled token's log-probability",
                        "top_logprobs", "unsupported_value")
    elif logprobs is not None:
        if not is_int(logprobs) or not 0 <= logprobs <= 5:
            raise _fail("logprobs must be an integer in [0, 5]", "logprobs")
        if logprobs > 0:
            raise _fail("logprobs > 0 (top alternatives) is not supported: logprobs=0 returns each sampled token's "
                        "log-probability", "logprobs", "unsupported_value")
        logprobs = True
    config_ = GenerationConfig(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p),
                               stop=tuple(stop), seed=seed)
    return ParsedRequest(kind, model, prompt, config_, stream, bool(logprobs), chars)


# --- responses ----------------------------------------------------------------------------------

def usage_body(u: Any) -> dict[str, Any]:
    """OpenAI's usage plus the request's energy (``source`` says how it was measured) and timings."""
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "energy": {"joules": u.joules, "source": u.energy_source, "grams_co2": u.grams_co2},
            "truncated_prompt_tokens": u.truncated_tokens, "ttft_s": u.ttft_s, "latency_s": u.latency_s,
            "tokens_per_s": u.tokens_per_s}


def ensemble_body(resp: Any, requested: str) -> dict[str, Any]:
    """Which member(s) answered and why: route decision, cascade level, fallbacks."""
    details = {k: v for k, v in resp.details.items() if k in ("route", "level", "levels", "cross_scores")}
    return {"model": requested, "strategy": resp.strategy, "members": list(resp.members), "reason": resp.reason,
            "fallbacks": list(resp.fallbacks), **details}


def _object(req: ParsedRequest, chunk: bool) -> str:
    if req.kind == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _id(req: ParsedRequest) -> str:
    return ("chatcmpl-" if req.kind == "chat" else "cmpl-") + req.id


def logprobs_body(req: ParsedRequest, pieces: list[str], values: list[float]) -> dict[str, Any]:
    if req.kind == "chat":
        return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                            for t, lp in zip(pieces, values)]}
    offsets, at = [], 0
    for t in pieces:
        offsets.append(at)
        at += len(t)
    return {"tokens": pieces, "token_logprobs": values, "top_logprobs": None, "text_offset": offsets}


def completion_body(req: ParsedRequest, resp: Any, logprobs: dict | None) -> dict[str, Any]:
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": resp.text}, "logprobs": logprobs,
                  "finish_reason": resp.finish_reason}
    else:
        choice = {"index": 0, "text": resp.text, "logprobs": logprobs, "finish_reason": resp.finish_reason}
    return {"id": _id(req), "object": _object(req, False), "created": req.created, "model": req.model,
            "system_fingerprint": None, "choices": [choice], "usage": usage_body(resp.usage),
            "ensemble": ensemble_body(resp, req.model)}


def chunk_body(req: ParsedRequest, text: str | None = None, *, first: bool = False, finish: str | None = None,
               logprobs: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    if req.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else (
            {"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
    return {"id": _id(req), "object": _object(req, True), "created": req.created, "model": req.model,
            "system_fingerprint": None, "choices": [choice], **(extra or {})}
