"""The ASGI app of `shelf serve`: routes, auth, limits and codecs around the `Batcher`.

The request path is kept short on purpose (it shares the CPU with the model): api POSTs are raw
ASGI handlers that skip starlette's middleware and router (starlette serves everything else),
metrics are lock-free counters, JSON goes through orjson + numpy, and the forward pass runs on the
worker thread so the event loop only parses and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .batching import Batcher, Overloaded, QueueSpec
from .codecs import (
    JSON,
    SAFETENSORS,
    InputError,
    decode_json,
    decode_param,
    decode_safetensors,
    encode_json,
    encode_safetensors,
    refuse_booleans,
)
from .docs import docs_routes
from .live import Routed
from .metrics import ServeMetrics
from .openapi import openapi_document, schema_document
from .target import Call, Endpoint, Served, make_runner

if TYPE_CHECKING:
    from .live import Following

__all__ = ["ServeOptions", "build_app"]


@dataclass(frozen=True)
class ServeOptions:
    """Server settings from the command line; `None` batching values keep each api's own."""

    host: str = "127.0.0.1"
    port: int = 3000
    max_batch_size: int | None = None
    max_latency_ms: float | None = None
    max_queue: int = 1024
    timeout: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    api_token: str | None = None
    metrics_auth: bool = False
    access_log: bool = False
    fill_wait: bool = True
    threads: int | None = None


class _State:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.failed: str | None = None
        self.fns: dict[str, Callable[..., Any]] = {}
        self.runners: dict[str, Callable[..., Any]] = {}
        self.on_failure: Callable[[str], None] | None = None


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(encode_json({"error": message}), status, headers, media_type=JSON)


class _Disconnected(Exception):
    """The client closed the connection before sending its whole body."""


class _AsgiEndpoint:
    """Wraps a raw ASGI callable so that starlette's `Route` does not wrap it in a Request."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _FastPath:
    """The ASGI entry point: an api POST goes straight to its handler; everything else (other
    routes, 404/405, lifespan) goes through starlette. Skipping starlette's middleware stack and
    router on the hot path saves about a sixth of a small model's per-request CPU."""

    def __init__(
        self, app: Starlette, routes: dict[str, Callable[[Scope, Receive, Send], Any]]
    ) -> None:
        self.app = app
        self.routes = routes
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


_JSON_BYTES = JSON.encode()
_ST_BYTES = SAFETENSORS.encode()


def _wants_safetensors(accept: str, sent_safetensors: bool) -> bool:
    if SAFETENSORS in accept:
        return True
    return sent_safetensors and (not accept or accept.startswith("*/*"))


def build_app(
    served: Served, options: ServeOptions, following: Following | None = None
) -> _FastPath:
    """Build the ASGI app; the model loads on the worker thread once the server starts.

    With `following` (`shelf serve NAME --label ...`), its `LiveModel` runs the batches, so a
    swap changes the version under the queues, and every response names its version.
    """
    endpoints = [_effective(ep, options) for ep in served.endpoints]
    served.endpoints = endpoints
    live = following.live if following is not None else None
    if live is not None:
        live.endpoints = endpoints
        live.wait_s = options.timeout
    names = [ep.name for ep in endpoints]
    metrics = ServeMetrics(names)
    state = _State()
    executor = ThreadPoolExecutor(1, thread_name_prefix=f"torchshelf-{served.device}")

    def trampoline(name: str) -> Callable[[list[Call]], Any]:
        def run(calls: list[Call]) -> Any:
            return state.runners[name](calls)

        return run

    specs = [
        QueueSpec(
            name=ep.name,
            run=live.runner(ep.name) if live is not None else trampoline(ep.name),
            batchable=ep.batch,
            max_batch_size=ep.max_batch_size,
            max_latency_ms=ep.max_latency_ms,
            max_queue=options.max_queue,
        )
        for ep in endpoints
    ]
    holder: dict[str, Batcher] = {}
    token = options.api_token.encode() if options.api_token else None

    def authorized(header: str) -> bool:
        if token is None:
            return True
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token)

    def request_authorized(request: Request) -> bool:
        return authorized(request.headers.get("authorization", ""))

    async def read_body(receive: Receive, length: bytes | None) -> bytes:
        limit = options.max_body_bytes
        if length is not None:
            try:
                if int(length) > limit:
                    raise InputError(f"request body is larger than the {limit}-byte limit", 413)
            except ValueError:
                raise InputError("invalid Content-Length header", 400) from None
        # One deadline for the whole body, so a slow-loris client that trickles bytes (or sends
        # part of a body and stalls) is answered 408 instead of holding a task forever. A timer
        # that cancels this task costs a heap push, not the task that `wait_for` would create.
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(options.timeout, expire)
        try:
            return await _receive_body(receive, limit)
        except asyncio.CancelledError:
            if not expired:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python >= 3.11
            if uncancel is not None:
                uncancel()
            raise InputError(
                f"the request body did not arrive within {options.timeout:g} s; "
                "send the whole body at once",
                408,
            ) from None
        finally:
            timer.cancel()

    def make_handler(ep: Endpoint) -> Callable[[Scope, Receive, Send], Any]:
        name = ep.name
        params = ep.params
        batch = ep.batch
        wrap = ep.wrap_outputs
        timeout = options.timeout
        image_param = next((p for p in params if p.kind == "image"), None)

        def decode(body: bytes, ctype: str) -> tuple[dict[str, Any], bool]:
            if ctype.startswith(SAFETENSORS):
                tensors, meta = decode_safetensors(body)
                fields: dict[str, Any] = {}
                for k, v in meta.items():
                    try:
                        fields[k] = decode_json(v.encode())
                    except InputError:
                        fields[k] = v
                fields.update(tensors)
                for p in params:
                    if p.kind == "list" and p.item_kind == "tensor" and p.name in tensors:
                        fields[p.name] = list(tensors[p.name].unbind(0))
                return {p.name: decode_param(p, fields, batch) for p in params}, True
            if ctype.startswith("image/") and image_param is not None:
                return {p.name: decode_param(p, {image_param.name: body}) for p in params}, False
            if ctype.startswith("multipart/"):
                raise InputError(
                    f"multipart bodies are not supported: send application/json, {SAFETENSORS}"
                    " or a raw image/* body",
                    415,
                )
            # Anything else is read as JSON, so `curl -d '{...}'` works without a header.
            data = decode_json(body)
            if not isinstance(data, dict):
                raise InputError(
                    "the JSON body must be an object whose keys are the api's parameters: "
                    + ", ".join(p.name for p in params)
                )
            if b"true" in body or b"false" in body:
                refuse_booleans(params, data)
            return {p.name: decode_param(p, data, batch) for p in params}, False

        def encode(result: Any, binary: bool) -> tuple[bytes, bytes]:
            if binary:
                import torch

                if isinstance(result, torch.Tensor):
                    return encode_safetensors({"outputs": result}), _ST_BYTES
                if (
                    isinstance(result, dict)
                    and result
                    and all(isinstance(v, torch.Tensor) for v in result.values())
                ):
                    return encode_safetensors(result), _ST_BYTES
            return encode_json({"outputs": result} if wrap else result), _JSON_BYTES

        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            # A raw ASGI endpoint: no Request/Response objects on the hot path.
            start = time.perf_counter()
            status = 200
            extra: list[tuple[bytes, bytes]] = []
            auth = ctype = accept = length = None
            for key, value in scope["headers"]:
                if key == b"content-type":
                    ctype = value
                elif key == b"content-length":
                    length = value
                elif key == b"accept":
                    accept = value
                elif key == b"authorization":
                    auth = value
            try:
                if not authorized(auth.decode("latin-1") if auth else ""):
                    status = 401
                    extra.append((b"www-authenticate", b"Bearer"))
                    raise InputError(
                        "missing or wrong API token: send 'Authorization: Bearer <token>'", 401
                    )
                if not state.ready:
                    status = 503
                    extra.append((b"retry-after", b"1"))
                    raise InputError(
                        state.failed or "the model is still loading; retry shortly", 503
                    )
                body = await read_body(receive, length)
                kwargs, binary = decode(body, ctype.decode("latin-1") if ctype else "")
                binary = _wants_safetensors(accept.decode("latin-1") if accept else "", binary)
                if ep.is_async:
                    result = await state.fns[name](**kwargs)
                elif live is not None:
                    rows = ep.rows_of(kwargs)
                    routed = Routed(Call(kwargs, rows), live.route())
                    out = await holder["b"].submit(name, routed, rows, timeout)
                    result = out.value
                    extra.append((b"x-model-version", out.version.encode()))
                else:
                    rows = ep.rows_of(kwargs)
                    result = await holder["b"].submit(name, Call(kwargs, rows), rows, timeout)
                content, media = encode(result, binary)
            except InputError as exc:
                status = exc.status
                content, media = encode_json({"error": str(exc)}), _JSON_BYTES
            except Overloaded as exc:
                status = 503
                extra.append((b"retry-after", str(int(exc.retry_after)).encode()))
                content, media = encode_json({"error": str(exc)}), _JSON_BYTES
            except _Disconnected:
                status = 499  # the client went away; nothing to answer
                metrics.request(name, status, time.perf_counter() - start)
                return
            except Exception as exc:
                status, message = _model_error(exc)
                content, media = encode_json({"error": message}), _JSON_BYTES
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", media),
                        (b"content-length", str(len(content)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": content})
            metrics.request(name, status, time.perf_counter() - start)

        return handler

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def readyz(request: Request) -> Response:
        if state.draining:
            return Response(b'{"status":"draining"}', 503, media_type=JSON)
        if state.ready and following is not None:
            return Response(encode_json({"status": "ready", **following.status()}), media_type=JSON)
        if state.ready:
            return Response(b'{"status":"ready"}', media_type=JSON)
        status = "failed" if state.failed else "loading"
        return Response(
            encode_json({"status": status, "error": state.failed}), 503, media_type=JSON
        )

    async def metrics_route(request: Request) -> Response:
        if options.metrics_auth and not request_authorized(request):
            return _error("missing or wrong API token", 401, {"WWW-Authenticate": "Bearer"})
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for ep in endpoints:  # the gauge is exact even between batches
            if "b" in holder:
                metrics.queue_depth(ep.name, holder["b"].depth(ep.name))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    doc_cache: dict[str, bytes] = {}

    async def openapi(request: Request) -> Response:
        if "openapi" not in doc_cache:
            doc_cache["openapi"] = encode_json(openapi_document(served, options))
        return Response(doc_cache["openapi"], media_type=JSON)

    async def schema(request: Request) -> Response:
        if "schema" not in doc_cache:
            doc_cache["schema"] = encode_json(schema_document(served, options))
        return Response(doc_cache["schema"], media_type=JSON)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no route {request.url.path}; see /openapi.json"}.get(
            exc.status_code, str(exc.detail)
        )
        return _error(message, exc.status_code, dict(exc.headers or {}))

    def load() -> None:
        if served.device == "cpu":
            import torch

            torch.set_num_threads(options.threads or default_threads())
        if following is not None:
            following.start()
            return
        fns = served.load()
        state.fns = fns
        state.runners = {
            ep.name: make_runner(ep, fns[ep.name], served.device)
            for ep in endpoints
            if not ep.is_async
        }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = Batcher(
            specs,
            executor=executor,
            observer=metrics,
            default_timeout=options.timeout,
            fill_wait=options.fill_wait,
        )
        holder["b"] = batcher
        loop = asyncio.get_running_loop()

        async def load_then_ready() -> None:
            try:
                await loop.run_in_executor(executor, load)
            except asyncio.CancelledError:
                return
            except BaseException as exc:
                state.failed = f"loading {served.title} failed: {type(exc).__name__}: {exc}"
                print(f"error: {state.failed}", file=sys.stderr, flush=True)
                if state.on_failure is not None:
                    state.on_failure(state.failed)
                return
            state.ready = True
            if app.state.on_ready is not None:
                app.state.on_ready()

        task = asyncio.ensure_future(load_then_ready())
        try:
            yield
        finally:
            await batcher.drain()
            batcher.close()
            task.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    handlers = {ep.name: make_handler(ep) for ep in endpoints}
    routes = [
        Route(ep.path, _AsgiEndpoint(handlers[ep.name]), methods=["POST"], name=ep.name)
        for ep in endpoints
    ] + [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/schema", schema, methods=["GET"]),
        *docs_routes("/openapi.json", title=f"torchshelf: {served.title}"),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.serve_state = state
    app.state.metrics = metrics
    if following is not None:
        from .live import FollowCollector

        metrics.registry.register(FollowCollector(following))
    app.state.on_ready = None
    return _FastPath(app, {ep.path: handlers[ep.name] for ep in endpoints})


async def _receive_body(receive: Receive, limit: int) -> bytes:
    """Collect the ASGI body messages, refusing (413) once more than `limit` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise InputError(f"request body is larger than the {limit}-byte limit", 413)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def default_threads() -> int:
    """Torch threads for CPU serving: every core but one, which is left to the event loop.

    The loop parses and answers requests while the worker computes; if torch took every core,
    the loop would be starved during each forward, fewer requests would be decoded per batch,
    and batches (and throughput) would shrink.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


def _effective(ep: Endpoint, options: ServeOptions) -> Endpoint:
    """Apply `--max-batch-size` / `--max-latency-ms` to batch apis."""
    from dataclasses import replace

    if not ep.batch:
        return ep
    changes: dict[str, Any] = {}
    if options.max_batch_size is not None:
        changes["max_batch_size"] = options.max_batch_size
    if options.max_latency_ms is not None:
        changes["max_latency_ms"] = options.max_latency_ms
    return replace(ep, **changes) if changes else ep


def _model_error(exc: Exception) -> tuple[int, str]:
    """Map an exception raised by the model or the api to a status and a message.

    The batch was bisected before we got here, so an error that reaches one caller belongs to
    that caller's input: value/shape errors are the input's fault (422); anything else is 500.
    """
    kind = type(exc).__name__
    if kind == "OutOfMemoryError":
        return 503, f"the device ran out of memory: {exc}"
    if isinstance(exc, (ValueError, TypeError, IndexError, KeyError, RuntimeError)):
        return 422, f"the model rejected this input: {kind}: {exc}"
    return 500, f"the api raised {kind}: {exc}"
