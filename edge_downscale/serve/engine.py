"""Runs requests on an ensemble off the event loop: admission queues, worker threads, cancellation.

Each admitted request gets a worker thread that drives the ensemble's (or one member's) token
stream and hands events to the event loop (``loop.call_soon_threadsafe``). Members answer in
parallel (each has its own lock in the runtime); requests for one member wait on its lock, at
most ``1 + queue_size`` per member at once, beyond which :meth:`Engine.admit` answers ``429``.
A cancelled job (the client went away) closes its token stream at the next token: the member's
lock is released and the KV cache reset by the runtime's own ``finally`` blocks.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..artifacts import verify_manifest
from ..errors import BundleError, ConfigError, EdgeDownscaleError
from ..runtime import Ensemble, Response, ResponseChunk
from ..runtime.strategies import prompt_text
from .config import ServeConfig
from .metrics import Metrics
from .protocol import ParsedRequest, RequestError

DONE = "done"


class Job:
    """One admitted request: its worker thread's events arrive on ``events`` (an asyncio queue)."""

    def __init__(self, req: ParsedRequest, members: list[str], loop: asyncio.AbstractEventLoop):
        self.req, self.members, self.loop = req, members, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.started = time.perf_counter()
        self.first_token_s: float | None = None

    def push(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone (server shutting down)
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """The ensemble behind the HTTP layer: names, admission, verification, metrics."""

    def __init__(self, bundle: str | Path | Ensemble, config: ServeConfig):
        self.config = config
        self.ens = bundle if isinstance(bundle, Ensemble) else Ensemble.load(bundle)
        if config.memory_budget_mb is not None:
            self.ens.memory_budget_mb = float(config.memory_budget_mb)
        self.name = config.model_name or self.ens.root.resolve().name
        if self.name in self.ens.members:
            raise ConfigError(f"the model name {self.name!r} is also a member's name; pass another --model-name")
        self.metrics = Metrics()
        self._lock = threading.Lock()
        self.in_flight: dict[str, int] = {name: 0 for name in self.ens.members}
        self._seconds: dict[str, float] = {}  # moving average of each member's request time (Retry-After)
        self.verify()
        if config.preload:
            for name in self.ens.members:
                with self.ens.use(name):
                    pass

    def verify(self) -> None:
        """Every member's files against its manifest (sha256), before the first request is accepted."""
        for member in self.ens.members.values():
            if not member.verified:
                try:
                    verify_manifest(member.dir)
                except EdgeDownscaleError as e:
                    raise BundleError(f"member {member.name!r} of {self.ens.root}: {e}") from e
                member.verified = True

    # --- names and admission ----------------------------------------------------------------

    def label(self, model: Any) -> str:
        """A metrics label for a requested model: known names only (clients cannot grow the label set)."""
        return model if model == self.name or model in self.ens.members else "other"

    def targets(self, req: ParsedRequest) -> list[str]:
        """The member(s) a request will occupy first (whose queues admit it)."""
        if req.model in self.ens.members:
            return [req.model]  # a member by name: looked up in the bundle, never opened as a path
        if req.model != self.name:
            raise RequestError(f"model {req.model!r} does not exist here; use {self.name!r} (the ensemble) or a member: "
                               f"{', '.join(self.ens.members)}", status=404, param="model", code="model_not_found")
        strategy = self.ens.strategy
        if strategy.name == "route":
            order, _ = strategy.order(prompt_text(req.prompt))
            return order[:1]
        if strategy.name == "cascade":
            return list(strategy.levels[:1])
        return list(getattr(strategy, "voters", self.ens.members))

    def admit(self, req: ParsedRequest, loop: asyncio.AbstractEventLoop) -> Job:
        """A job for ``req``, or ``429`` with ``Retry-After`` when a member's queue is full."""
        members = self.targets(req)
        limit = 1 + self.config.queue_size
        with self._lock:
            full = [m for m in members if self.in_flight[m] >= limit]
            if full:
                for m in full:
                    self.metrics.rejected.labels(m).inc()
                wait = max(self._seconds.get(m, 1.0) * self.in_flight[m] for m in full)
                raise RequestError(f"member {full[0]!r} has {self.in_flight[full[0]]} requests in hand (its queue holds "
                                   f"{self.config.queue_size}); retry later", status=429, code="queue_full",
                                   type="rate_limit_error", headers={"Retry-After": str(max(1, math.ceil(wait)))})
            for m in members:
                self.in_flight[m] += 1
        job = Job(req, members, loop)
        threading.Thread(target=self._work, args=(job,), name=f"serve-{req.id[:8]}", daemon=True).start()
        return job

    def _release(self, job: Job, resp: Response | None) -> None:
        with self._lock:
            for m in job.members:
                self.in_flight[m] -= 1
            if resp is not None:
                for m in resp.members:
                    old = self._seconds.get(m)
                    self._seconds[m] = resp.usage.latency_s if old is None else 0.8 * old + 0.2 * resp.usage.latency_s

    # --- the worker ---------------------------------------------------------------------------

    def _stream(self, req: ParsedRequest) -> Iterator[ResponseChunk]:
        if req.model not in self.ens.members:
            return self.ens.generate(req.prompt, req.config, stream=True)
        return self._member_stream(req.model, req)

    def _member_stream(self, name: str, req: ParsedRequest) -> Iterator[ResponseChunk]:
        """One member, by name: its own answer (no fallback), as ensemble chunks."""
        with self.ens.use(name) as backend:
            for c in self.ens.run_generation(backend, req.prompt, req.config, stream=True):
                if c.final is None:
                    yield ResponseChunk(c.text)
                    continue
                g = c.final
                resp = Response("member", [name], f"requested by name: {name}", g.usage, text=g.text,
                                finish_reason=g.finish_reason, details={"template": g.template}, tokens=g.tokens,
                                token_logprobs=g.logprobs)
                yield ResponseChunk("", self.ens.record(resp))

    def _pieces(self, resp: Response) -> list[str]:
        with self.ens.use(resp.members[0]) as backend:
            return [backend.detokenize([t]) for t in resp.tokens or []]

    def _work(self, job: Job) -> None:
        resp = None
        chunks = None
        try:
            chunks = self._stream(job.req)
            for chunk in chunks:
                if job.cancelled.is_set():
                    self.metrics.cancelled.labels(job.req.kind).inc()
                    return
                if chunk.final is not None:
                    resp = chunk.final
                    pieces = self._pieces(resp) if job.req.logprobs else None
                    self.metrics.record_answer(resp)
                    job.push("final", (resp, pieces))
                elif chunk.restart:
                    job.push("restart")
                elif chunk.text:
                    if job.first_token_s is None:
                        job.first_token_s = time.perf_counter() - job.started
                    job.push("text", chunk.text)
        except RequestError as e:
            job.push("error", e)
        except BundleError as e:
            job.push("error", RequestError(str(e), status=503, code="no_member_answered"))
        except ConfigError as e:  # the request itself (prompt too long for overflow="error", bad messages)
            job.push("error", RequestError(str(e), status=400))
        except Exception as e:  # noqa: BLE001 - a member failed (one named member has no fallback)
            job.push("error", RequestError(f"{type(e).__name__}: {e}", status=502, code="member_failed"))
        finally:
            if chunks is not None and hasattr(chunks, "close"):
                chunks.close()  # runs the runtime's finally blocks: member lock released, cache reset
            self._release(job, resp)
            job.push(DONE)

    # --- descriptions ---------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        created = int(self.ens.root.joinpath("ensemble.json").stat().st_mtime)
        out = [{"id": self.name, "object": "model", "created": created, "owned_by": "edge-downscale",
                "kind": "ensemble", "strategy": self.ens.strategy.name, "members": list(self.ens.members),
                "memory_budget_mb": self.ens.memory_budget_mb}]
        loaded = set(self.ens.loaded)
        for m in self.ens.members.values():
            out.append({"id": m.name, "object": "model", "created": created, "owned_by": "edge-downscale",
                        "kind": "member", "parent": self.name, "domain": m.domain, "backend": m.spec.backend,
                        "format": m.manifest.get("format"), "quantization": m.manifest.get("quantization"),
                        "size_bytes": m.manifest.get("total_bytes"), "memory_mb": round(m.memory_mb, 1),
                        "context_length": (m.spec.options.get("n_ctx") or m.manifest.get("context_length")),
                        "loaded": m.name in loaded})
        return out

    def health(self) -> dict[str, Any]:
        with self._lock:
            in_flight = dict(self.in_flight)
        return {"status": "ok", "model": self.name, "strategy": self.ens.strategy.name, "members": list(self.ens.members),
                "loaded": self.ens.loaded, "resident_mb": round(self.ens.loaded_mb(), 1),
                "memory_budget_mb": self.ens.memory_budget_mb, "in_flight": in_flight,
                "evictions": self.ens.stats["evictions"], "over_budget": self.ens.stats["over_budget"]}

    def render_metrics(self) -> bytes:
        with self._lock:
            in_flight = dict(self.in_flight)
        return self.metrics.render(self.ens, in_flight)

    def close(self) -> None:
        self.ens.close()
