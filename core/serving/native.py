"""`NativeHandler`: torchshelf's own protocol, `POST /<api>` (or `/models/<name>/<api>`).

Each route translates its body (JSON, safetensors or a raw image) into the api's keyword
arguments, makes the one call into the registry, `registry.infer(model, api, kwargs, rows)`, and
encodes the result back (safetensors when asked for, else JSON), with `X-Model-Version`.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from .asgi import (
    JSON_BYTES,
    AsgiApp,
    Authorizer,
    Disconnected,
    RequestHead,
    error_answer,
    read_body,
    send_answer,
)
from .codecs import (
    SAFETENSORS,
    InputError,
    Param,
    decode_json,
    decode_param,
    decode_safetensors,
    encode_json,
    encode_safetensors,
    refuse_booleans,
)
from .metrics import ServeMetrics
from .options import ServeOptions
from .protocol import ServeContext
from .registry import ModelRegistry, ModelSlot
from .streaming import GeneratorStream, send_stream, stream_format
from .target import Endpoint

__all__ = ["NativeHandler"]

_ST_BYTES = SAFETENSORS.encode()


class NativeHandler:
    """The native routes of every served model: exact POST paths, for the app's fast path.
    (Their OpenAPI paths are the core of the document openapi.py writes.)"""

    def __init__(self, ctx: ServeContext) -> None:
        self.registry = ctx.registry
        self.post: dict[str, AsgiApp] = {}
        for slot in ctx.registry.slots.values():
            for ep in slot.endpoints:
                route = NativeRoute(ctx.registry, slot, ep, ctx.options, ctx.metrics, ctx.auth)
                self.post[slot.path(ep.name)] = route

    def post_routes(self) -> dict[str, AsgiApp]:
        """Exact path -> raw ASGI handler, for every api of every served model."""
        return dict(self.post)

    def routes(self) -> list[BaseRoute]:
        return []

    def openapi_paths(self) -> dict[str, Any]:
        return {}


class NativeRoute:
    """One api of one model: body -> kwargs -> `registry.infer` -> body."""

    def __init__(
        self,
        registry: ModelRegistry,
        slot: ModelSlot,
        ep: Endpoint,
        options: ServeOptions,
        metrics: ServeMetrics,
        auth: Authorizer,
    ) -> None:
        self.registry = registry
        self.model = slot.name
        self.api = ep.name
        self.endpoint = ep
        self.series = slot.queues[ep.name]
        self.options = options
        self.metrics = metrics
        self.auth = auth
        self.image_param = next((p for p in ep.params if p.kind == "image"), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        extra: list[tuple[bytes, bytes]] = []
        head = RequestHead(scope)
        registry = self.registry
        options = self.options
        try:
            if not self.auth.allows(head.auth):
                raise self.auth.refuse()
            if not registry.ready:
                raise InputError(
                    registry.failed or "the model is still loading; retry shortly", 503
                )
            body = await read_body(receive, head.length, options.max_body_bytes, options.timeout)
            kwargs, binary = self.decode(body, head.content_type)
            binary = _wants_safetensors(head.accepts, binary)
            ep = self.endpoint
            if ep.stream:
                await self.stream(receive, send, kwargs, head.accepts, start)
                return
            rows = ep.rows_of(kwargs)
            result = await registry.infer(self.model, self.api, kwargs, rows, options.timeout)
            content, media = self.encode(result.value, binary)
            status = 200
            extra.append((b"x-model-version", result.version.encode()))
        except Disconnected:
            self.metrics.request(self.series, 499, time.perf_counter() - start)
            return  # the client went away; nothing to answer
        except Exception as exc:
            status, message = error_answer(exc, extra)
            content, media = encode_json({"error": message}), JSON_BYTES
            if status != 401:  # the version serving now (the one that refused, for a 422)
                extra.append((b"x-model-version", registry.slots[self.model].version.encode()))
        await send_answer(send, status, content, media, extra)
        self.metrics.request(self.series, status, time.perf_counter() - start)

    async def stream(
        self, receive: Receive, send: Send, kwargs: dict[str, Any], accepts: str, start: float
    ) -> None:
        """Answer a generator api with its items as they come (SSE, or NDJSON when asked)."""
        async with self.registry.stream(self.model, self.api, kwargs) as inference:
            outcome = await send_stream(
                send,
                receive,
                GeneratorStream(inference.value),
                fmt=stream_format(accepts),
                headers=[(b"x-model-version", inference.version.encode())],
                on_error=lambda exc: error_answer(exc, []),
            )
        self.metrics.request(self.series, outcome.metric_status, time.perf_counter() - start)

    def decode(self, body: bytes, ctype: str) -> tuple[dict[str, Any], bool]:
        """The api's keyword arguments, and whether the body was safetensors."""
        params = self.endpoint.params
        batch = self.endpoint.batch
        if ctype.startswith(SAFETENSORS):
            return _decode_safetensors_body(body, params, batch), True
        if ctype.startswith("image/") and self.image_param is not None:
            fields = {self.image_param.name: body}
            return {p.name: decode_param(p, fields) for p in params}, False
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

    def encode(self, result: Any, binary: bool) -> tuple[bytes, bytes]:
        """The response body and its media type."""
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
        wrapped = {"outputs": result} if self.endpoint.wrap_outputs else result
        return encode_json(wrapped), JSON_BYTES


def _decode_safetensors_body(body: bytes, params: list[Param], batch: bool) -> dict[str, Any]:
    """Tensors by parameter name; metadata strings fill the other parameters (JSON if they
    parse, else the string itself)."""
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
    return {p.name: decode_param(p, fields, batch) for p in params}


def _wants_safetensors(accept: str, sent_safetensors: bool) -> bool:
    if SAFETENSORS in accept:
        return True
    return sent_safetensors and (not accept or accept.startswith("*/*"))
