"""The Open Inference Protocol (KServe V2 REST) routes of `shelf serve`, under `/v2`.

`V2Routes` is one raw ASGI callable for every `/v2...` path. It translates V2 bodies (see
`v2_codec.py`) into the same call the native routes make into the model registry, so V2 and
native requests to one model share its batch queue and are batched together. What it needs of
the server is the small `V2Backend` interface; `RegistryBackend` provides it over the
`ModelRegistry`, and `V2Handler` is the protocol handler the app builds from its `ServeContext`.

Names: a stored model is the V2 model named by its model name (its default signature method);
each api of a `@service` is the V2 model named by the api. Status codes follow the protocol: 400
for a request the model cannot take (it names the input), 404 for an unknown model or version,
401 without the api token (inference and repository routes only), 503 while not ready or
overloaded (with `Retry-After`), 500 when the api itself fails. Every error body is
`{"error": "..."}`; every inference response carries `model_version` and `X-Model-Version`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .. import dtypes
from ..errors import NotFound
from .asgi import AsgiApp, Disconnected, error_answer, read_body
from .codecs import JSON, InputError, decode_json, encode_json
from .registry import ModelRegistry
from .target import Endpoint
from .v2_codec import (
    HEADER_LENGTH,
    OCTET_STREAM,
    OutputTensor,
    bind_inputs,
    encode_infer_response,
    model_metadata,
    output_metadata,
    outputs_of,
    parse_infer_request,
    server_metadata,
)

if TYPE_CHECKING:
    from .protocol import ServeContext

__all__ = ["ModelState", "RegistryBackend", "V2Backend", "V2Handler", "V2Model", "V2Routes"]

PREFIX = "/v2"
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"


@dataclass(frozen=True)
class V2Model:
    """One V2 model: the served target (`model`, its registry name) and the api it runs."""

    name: str
    model: str
    endpoint: Endpoint
    platform: str
    series: str = ""  # the metrics series of its requests (the api's queue)


@dataclass(frozen=True)
class ModelState:
    """A served target's state in the repository index: READY, LOADING or UNAVAILABLE."""

    state: str
    version: str | None = None
    reason: str = ""


class V2Backend(Protocol):
    """What the V2 routes need of the server; the model registry implements it."""

    def v2_models(self) -> Sequence[V2Model]: ...

    def server_ready(self) -> bool: ...

    def model_state(self, model: str) -> ModelState: ...

    async def infer(
        self, model: str, api: str, kwargs: dict[str, Any], rows: int
    ) -> tuple[Any, str | None]: ...

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...


BodyReader = Callable[[Receive, bytes | None], Awaitable[bytes]]
Observer = Callable[[str, int, float], None]  # (metrics series, status, seconds)


class _Answer(Exception):
    """A finished non-200 answer raised from deep inside a route."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()):
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


class V2Routes:
    """Serves `/v2...` for the models of one server (an ASGI app for those paths only)."""

    def __init__(
        self,
        backend: V2Backend,
        *,
        read_body: BodyReader,
        server_version: str,
        api_token: str | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.backend = backend
        self.read_body = read_body
        self.server_version = server_version
        self.token = api_token.encode() if api_token else None
        self.observe = observe
        self._outputs: dict[tuple[str, str | None], list[dict[str, Any]]] = {}

    # -- entry ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        headers = dict(scope["headers"])
        series: list[str] = []  # set once the request is known to be an infer of a model
        extra: list[tuple[bytes, bytes]] = []
        try:
            status, body, extra = await self._dispatch(scope, receive, headers, series)
        except Disconnected:
            status, body = 499, b""
        except _Answer as answer:
            status, body, extra = answer.status, _error(str(answer)), answer.headers
        except NotFound as exc:
            status, body = 404, _error(str(exc))
        except Exception as exc:
            status, message = error_answer(exc, extra)
            status = 400 if status == 422 else status  # the protocol's "bad request"
            body = _error(message)
        if status != 499:  # 499: the client went away, there is no one to answer
            await _send(send, status, body, extra)
        if series and self.observe is not None:
            self.observe(series[0], status, time.perf_counter() - start)

    async def _dispatch(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], series: list[str]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        method, parts = scope["method"], scope["path"].rstrip("/").split("/")[2:]
        if parts in ([], ["health", "live"], ["health", "ready"]):
            _allow(method, "GET")
            return *self._health(parts), []
        if parts[:1] == ["repository"]:
            _allow(method, "POST")
            self._authorize(headers)
            body = await self.read_body(receive, headers.get(b"content-length"))
            return 200, await self._repository(parts[1:], body), []
        if parts[:1] == ["models"] and len(parts) >= 2:
            model, rest = self._find(parts[1:])
            if rest == []:
                _allow(method, "GET")
                return 200, encode_json(await self._metadata(model)), []
            if rest == ["ready"]:
                _allow(method, "GET")
                return *self._model_ready(model), []
            if rest == ["infer"]:
                _allow(method, "POST")
                series.append(model.series or model.endpoint.name)
                self._authorize(headers)
                return await self._infer(model, receive, headers)
        raise _Answer(404, f"no route {scope['path']}; the V2 routes are listed in /openapi.json")

    def _authorize(self, headers: dict[bytes, bytes]) -> None:
        if self.token is None:
            return
        scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
            raise _Answer(
                401,
                "missing or wrong API token: send 'Authorization: Bearer <token>'",
                [(b"www-authenticate", b"Bearer")],
            )

    # -- models ---------------------------------------------------------------------------------

    def _find(self, parts: list[str]) -> tuple[V2Model, list[str]]:
        """`<name>[/versions/<v>]/rest...` -> the model and the rest; 404 if unknown."""
        name, rest = parts[0], parts[1:]
        models = {m.name: m for m in self.backend.v2_models()}
        model = models.get(name)
        if model is None:
            known = ", ".join(sorted(models)) or "none"
            raise _Answer(404, f"unknown model {name!r}; this server serves: {known}")
        if rest[:1] == ["versions"] and len(rest) >= 2:
            want, rest = rest[1], rest[2:]
            live = self.backend.model_state(model.model).version
            if want != live:
                have = f"the live version is {live}" if live else "no version is loaded"
                raise _Answer(404, f"model {name!r} has no version {want!r} loaded; {have}")
        return model, rest

    def _health(self, parts: list[str]) -> tuple[int, bytes]:
        if not parts:
            return 200, encode_json(server_metadata(self.server_version))
        if parts[1] == "live":
            return 200, b'{"live":true}'
        ready = self.backend.server_ready()
        return (200 if ready else 503), encode_json({"ready": ready})

    def _model_ready(self, model: V2Model) -> tuple[int, bytes]:
        ready = self.backend.model_state(model.model).state == READY
        return (200 if ready else 503), encode_json({"name": model.name, "ready": ready})

    async def _metadata(self, model: V2Model) -> dict[str, Any]:
        state = self.backend.model_state(model.model)
        ep = model.endpoint
        outputs = self._outputs.get((model.name, state.version))
        if outputs is None and state.state == READY and model.platform.startswith("pytorch_"):
            outputs = await self._probe(model)
        if outputs is None:  # not seen yet: what the api's return type says
            outputs = [_declared_output(ep)] if ep.returns in ("tensor", "str") else []
        versions = [state.version] if state.version else []
        return model_metadata(model.name, versions, model.platform, ep.params, outputs)

    async def _probe(self, model: V2Model) -> list[dict[str, Any]] | None:
        """A stored model's exact outputs: one forward on zeros shaped by its input spec (free
        dims 1), through its queue like any request. Services are never probed (side effects)."""
        ep = model.endpoint
        spec = ep.params[0].spec if len(ep.params) == 1 else None
        if spec is None or spec.shape is None:
            return None
        import torch

        row = dtypes.find(spec.dtype) if spec.dtype else None
        zeros = torch.zeros(
            [1 if d == -1 else d for d in spec.shape], dtype=row.torch if row else None
        )
        kwargs = {ep.params[0].name: zeros}
        try:
            result, version = await self.backend.infer(
                model.model, ep.name, kwargs, ep.rows_of(kwargs)
            )
            outputs = outputs_of(result)
        except Exception:  # the metadata falls back to the declared outputs
            return None
        self._remember(model, version, outputs)
        return self._outputs.get((model.name, version))

    async def _infer(
        self, model: V2Model, receive: Receive, headers: dict[bytes, bytes]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding not in (b"identity", b""):
            raise _Answer(415, f"Content-Encoding {encoding.decode()!r} is not supported")
        body = await self.read_body(receive, headers.get(b"content-length"))
        request = parse_infer_request(body, headers.get(HEADER_LENGTH.encode()))
        ep = model.endpoint
        kwargs = bind_inputs(request, ep.params, ep.batch)
        rows = ep.rows_of(kwargs)
        result, version = await self.backend.infer(model.model, ep.name, kwargs, rows)
        outputs = outputs_of(result)
        self._remember(model, version, outputs)
        content, header_length = encode_infer_response(model.name, version, request, outputs)
        extra = [(b"x-model-version", (version or "").encode())]
        if header_length is not None:
            extra += [
                (HEADER_LENGTH.encode(), str(header_length).encode()),
                (b"content-type", OCTET_STREAM.encode()),
            ]
        return 200, content, extra

    def _remember(self, model: V2Model, version: str | None, outputs: list[OutputTensor]) -> None:
        key = (model.name, version)
        if key not in self._outputs:
            self._outputs[key] = output_metadata(outputs, model.endpoint.batch)

    # -- repository extension -------------------------------------------------------------------

    async def _repository(self, parts: list[str], body: bytes) -> bytes:
        doc = decode_json(body) if body.strip() else {}
        if not isinstance(doc, dict):
            raise InputError("the request body must be a JSON object", 400)
        if parts == ["index"]:
            return encode_json(self._index(bool(doc.get("ready", False))))
        if len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload"):
            model, _ = self._find(parts[1:2])
            if parts[2] == "load":
                await self.backend.load(model.model)
            else:
                await self.backend.unload(model.model)
            return b"{}"
        raise _Answer(404, f"no route /v2/repository/{'/'.join(parts)}")

    def _index(self, ready_only: bool) -> list[dict[str, Any]]:
        out = []
        for model in self.backend.v2_models():
            state = self.backend.model_state(model.model)
            if ready_only and state.state != READY:
                continue
            entry: dict[str, Any] = {"name": model.name, "state": state.state}
            if state.version:
                entry["version"] = state.version
            entry["reason"] = state.reason
            out.append(entry)
        return out


def _declared_output(ep: Endpoint) -> dict[str, Any]:
    datatype = "BYTES" if ep.returns == "str" else "FP32"
    return {"name": "outputs", "datatype": datatype, "shape": [-1]}


def _allow(method: str, want: str) -> None:
    if method != want:
        raise _Answer(405, f"use {want} on this route", [(b"allow", want.encode())])


def _error(message: str) -> bytes:
    return encode_json({"error": message})


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-length", str(len(body)).encode()), *extra]
    if not any(k == b"content-type" for k, _ in extra):
        headers.append((b"content-type", JSON.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- over the model registry --------------------------------------------------------------------

_STATES = {"ready": READY, "loading": LOADING, "unloaded": UNAVAILABLE, "failed": UNAVAILABLE}


def _platform(served: Any) -> str:
    if served.kind != "model":
        return "torchshelf_service"
    fmt = (served.details or {}).get("format") or "safetensors"
    return f"pytorch_{fmt}"  # pytorch_safetensors (eager weights) or pytorch_torchscript


def _default_api(endpoints: Sequence[Endpoint]) -> Endpoint:
    """A stored model's V2 api: `predict` (its `__call__`) if it has one, else its first."""
    return next((ep for ep in endpoints if ep.name == "predict"), endpoints[0])


def v2_models_of(registry: ModelRegistry) -> list[V2Model]:
    """Every V2 model of the served targets.

    A stored model is named by its model name (its `predict`, i.e. `__call__`, or its first
    signature method) and its other methods by `<model>.<method>`; a service api by the api's
    name, or `<target>.<api>` where two targets would give one name twice. Streaming
    (generator) apis have no V2 form and are left out.
    """
    found: list[V2Model] = []
    for slot in registry.slots.values():
        served = slot.served
        eps = [ep for ep in slot.endpoints if not ep.stream]  # V2 REST cannot stream
        if not eps:
            continue
        default = _default_api(eps) if served.kind == "model" else None
        for ep in eps:
            if served.kind != "model":
                name = ep.name
            else:
                name = slot.name if ep is default else f"{slot.name}.{ep.name}"
            found.append(V2Model(name, slot.name, ep, _platform(served), slot.queues[ep.name]))
    names = [m.name for m in found]
    return [
        m if names.count(m.name) == 1 else V2Model(f"{m.model}.{m.endpoint.name}", *_rest(m))
        for m in found
    ]


def _rest(m: V2Model) -> tuple[str, Endpoint, str, str]:
    return m.model, m.endpoint, m.platform, m.series


class RegistryBackend:
    """`V2Backend` over the `ModelRegistry`: the same queues as the native routes."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.models = v2_models_of(registry)
        self.draining = False  # set by the app on SIGTERM, as /readyz

    def v2_models(self) -> Sequence[V2Model]:
        return self.models

    def server_ready(self) -> bool:
        return bool(self.registry.ready) and not self.draining

    def model_state(self, model: str) -> ModelState:
        slot = self.registry.slot(model)
        state = _STATES.get(slot.state, UNAVAILABLE)
        reason = slot.error or ("" if state == READY else f"{slot.state}; it loads on first use")
        return ModelState(state, slot.version or None, reason)

    async def infer(
        self, model: str, api: str, kwargs: dict[str, Any], rows: int
    ) -> tuple[Any, str | None]:
        inference = await self.registry.infer(model, api, kwargs, rows)
        return inference.value, inference.version

    async def load(self, model: str) -> None:
        await self.registry.load(model)

    async def unload(self, model: str) -> None:
        await self.registry.unload(model)


class V2Handler:
    """The Open Inference Protocol as one of the app's protocol handlers.

    Each model's unversioned `infer` is an exact POST path (the app's raw fast path); every
    other `/v2...` route goes through one starlette route to the same `V2Routes`.
    """

    def __init__(self, ctx: ServeContext) -> None:
        from .. import __version__

        options = ctx.options
        self.backend = RegistryBackend(ctx.registry)
        self.secured = bool(options.api_token)

        async def body(receive: Receive, length: bytes | None) -> bytes:
            return await read_body(receive, length, options.max_body_bytes, options.timeout)

        self.app = V2Routes(
            self.backend,
            read_body=body,
            server_version=__version__,
            api_token=options.api_token,
            observe=ctx.metrics.request,
        )

    def begin_drain(self) -> None:
        """`/v2/health/ready` answers 503 from now on, like `/readyz`."""
        self.backend.draining = True

    def post_routes(self) -> dict[str, AsgiApp]:
        return {f"{PREFIX}/models/{m.name}/infer": self.app for m in self.backend.v2_models()}

    def routes(self) -> list[BaseRoute]:
        return [Route(PREFIX, _Raw(self.app)), Route(PREFIX + "/{rest:path}", _Raw(self.app))]

    def openapi_paths(self) -> dict[str, Any]:
        from .v2_openapi import v2_paths

        return v2_paths(self.backend.v2_models(), self.secured)


class _Raw:
    """Makes starlette's `Route` hand the raw ASGI call through (an object, not a function)."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
