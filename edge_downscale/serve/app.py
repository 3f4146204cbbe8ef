"""The HTTP layer: Starlette routes, API key, body cap, server-sent events, disconnects; uvicorn.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream`` or not),
``GET /v1/models``, ``GET /health``, ``GET /metrics``. Errors use OpenAI's body
``{"error": {"message", "type", "param", "code"}}``. A streamed member failure after text was
sent is signalled by a chunk with ``"restart": true`` (the text so far is discarded; the next
member's answer follows), since OpenAI's format cannot retract text.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import MissingDependencyError
from ..runtime import Ensemble
from .config import ServeConfig
from .engine import DONE, Engine, Job
from .protocol import RequestError, chunk_body, completion_body, error_body, ensemble_body, logprobs_body, parse, usage_body


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_json(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"the request body has {length} bytes; this server accepts at most {limit}",
                           code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise RequestError(f"the request body is over this server's limit of {limit} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except ValueError as e:
        raise RequestError(f"the request body is not valid JSON ({e})") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body is already read: only http.disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _next(job: Job, gone: asyncio.Task) -> tuple[str, Any] | None:
    """The job's next event, or None if the client went away first."""
    get = asyncio.ensure_future(job.events.get())
    done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    return None


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n\n"


class EventStream(Response):
    """Server-sent events from a job; the generation is cancelled as soon as the client disconnects."""

    media_type = "text/event-stream"

    def __init__(self, engine: Engine, job: Job, request: Request):
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]  # no content-length: the body is streamed
        self.engine, self.job, self.request = engine, job, request

    async def __call__(self, scope, receive, send) -> None:
        job, req = self.job, self.job.req
        status = "200"
        gone = asyncio.ensure_future(_disconnected(self.request))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            first = True
            while True:
                event = await _next(job, gone)
                if event is None:
                    status = "499"
                    job.cancel()
                    return
                kind, value = event
                if kind == DONE:
                    break
                if kind == "text":
                    data = _sse(chunk_body(req, value, first=first))
                    first = False
                elif kind == "restart":
                    data = _sse(chunk_body(req, "", extra={"restart": True}))
                elif kind == "error":
                    status = str(value.status)
                    data = _sse(value.body())
                else:  # final: finish reason, usage with energy, who answered
                    resp, pieces = value
                    lp = logprobs_body(req, pieces, list(resp.token_logprobs or [])) if pieces is not None else None
                    data = _sse(chunk_body(req, "" if first else None, first=first, finish=resp.finish_reason,
                                           logprobs=lp, extra={"usage": usage_body(resp.usage),
                                                               "ensemble": ensemble_body(resp, req.model)}))
                    self.engine.metrics.latency.labels(req.kind).observe(time.perf_counter() - job.started)
                    if job.first_token_s is not None:
                        self.engine.metrics.ttft.labels(req.kind).observe(job.first_token_s)
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except OSError:  # the connection broke while sending
            status = "499"
            job.cancel()
        finally:
            gone.cancel()
            if status == "499":
                job.cancel()
            self.engine.metrics.requests.labels(req.kind, self.engine.label(req.model), status).inc()


def create_app(bundle: str | Path | Ensemble | Engine, config: ServeConfig | None = None) -> Starlette:
    """The app; ``app.state.engine`` is its :class:`Engine` (bundle verified, members lazily loaded)."""
    config = config or ServeConfig()
    engine = bundle if isinstance(bundle, Engine) else Engine(bundle, config)
    config = engine.config
    key = config.api_key.encode("utf-8") if config.api_key else None

    def authorised(request: Request) -> RequestError | None:
        if key is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), key):
            return RequestError("invalid or missing API key: send Authorization: Bearer <key>", status=401,
                                code="invalid_api_key")
        return None

    def completions(kind: str):
        async def endpoint(request: Request) -> Response:
            body = None
            try:
                denied = authorised(request)
                if denied:
                    raise denied
                body = await _read_json(request, config.max_body_bytes)
                req = parse(body, kind, config)
                job = engine.admit(req, asyncio.get_running_loop())
            except RequestError as e:
                model = body.get("model") if isinstance(body, dict) else None
                engine.metrics.requests.labels(kind, engine.label(model), str(e.status)).inc()
                return _error(e)
            if req.stream:
                return EventStream(engine, job, request)
            return await _collect(job, request)
        return endpoint

    async def _collect(job: Job, request: Request) -> Response:
        req, final, error = job.req, None, None
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            while True:
                event = await _next(job, gone)
                if event is None:
                    job.cancel()
                    engine.metrics.requests.labels(req.kind, engine.label(req.model), "499").inc()
                    return Response(status_code=499)
                kind, value = event
                if kind == DONE:
                    break
                if kind == "final":
                    final = value
                elif kind == "error":
                    error = value
        finally:
            gone.cancel()
        if error is not None or final is None:
            error = error or RequestError("the generation ended without an answer", status=500)
            engine.metrics.requests.labels(req.kind, engine.label(req.model), str(error.status)).inc()
            return _error(error)
        resp, pieces = final
        engine.metrics.latency.labels(req.kind).observe(time.perf_counter() - job.started)
        if job.first_token_s is not None:
            engine.metrics.ttft.labels(req.kind).observe(job.first_token_s)
        engine.metrics.requests.labels(req.kind, engine.label(req.model), "200").inc()
        lp = logprobs_body(req, pieces, list(resp.token_logprobs or [])) if pieces is not None else None
        return JSONResponse(completion_body(req, resp, lp))

    async def models(request: Request) -> Response:
        denied = authorised(request)
        if denied:
            return _error(denied)
        return JSONResponse({"object": "list", "data": engine.models()})

    async def health(request: Request) -> Response:
        return JSONResponse(engine.health())

    async def metrics(request: Request) -> Response:
        denied = authorised(request)
        if denied:
            return _error(denied)
        return Response(engine.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"no route {request.method} {request.url.path}", code="not_found"), status_code=404)

    async def bad_method(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"{request.method} is not allowed on {request.url.path}"), status_code=405)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()  # unload every member

    app = Starlette(routes=[
        Route("/v1/chat/completions", completions("chat"), methods=["POST"]),
        Route("/v1/completions", completions("completion"), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], exception_handlers={404: not_found, 405: bad_method}, lifespan=lifespan)
    app.state.engine = engine
    return app


def serve(bundle: str | Path | Ensemble, config: ServeConfig | None = None, *, log=print) -> None:
    """Verify the bundle, then serve it with uvicorn on ``config.host:config.port`` until interrupted."""
    try:
        import uvicorn
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MissingDependencyError("uvicorn", "serve") from e
    config = config or ServeConfig()
    app = create_app(bundle, config)
    engine: Engine = app.state.engine
    log(f"serving {engine.name!r} ({engine.ens.strategy.name}; members {', '.join(engine.ens.members)}) "
        f"on http://{config.host}:{config.port}/v1" + (" (API key required)" if config.api_key else ""))
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
                timeout_graceful_shutdown=5)
