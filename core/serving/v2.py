"""The Open Inference Protocol (KServe V2 REST) routes of `shelf serve`, under `/v2`.

`V2Handler` is one raw ASGI callable for every `/v2...` path. It translates V2 bodies (see
`v2_codec.py`) into the same call the native routes make into the model registry, so V2 and
native requests to one model share its batch queue and are batched together. What it needs of
the server is the small `V2Backend` interface; the registry provides it.

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
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from ..errors import NotFound
from .batching import Overloaded
from .codecs import JSON, InputError, decode_json, encode_json
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

__all__ = ["ModelState", "V2Backend", "V2Handler", "V2Model"]

PREFIX = "/v2"
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"


@dataclass(frozen=True)
class V2Model:
    """One V2 model: the served target (`model`, its registry name) and the api it runs."""

    name: str
    model: str
    endpoint: Endpoint
    platform: str


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
Observer = Callable[[str, int, float], None]  # (api, status, seconds)


class _Answer(Exception):
    """A finished non-200 answer raised from deep inside a route."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()):
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


class V2Handler:
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
        api = ""
        try:
            api, status, body, extra = await self._dispatch(scope, receive, headers)
        except _Answer as answer:
            status, body, extra = answer.status, _error(str(answer)), answer.headers
        except InputError as exc:
            status = 400 if exc.status == 422 else exc.status
            body, extra = _error(str(exc)), []
        except Overloaded as exc:
            status, body = 503, _error(str(exc))
            extra = [(b"retry-after", str(max(1, int(exc.retry_after))).encode())]
        await _send(send, status, body, extra)
        if api and self.observe is not None:
            self.observe(api, status, time.perf_counter() - start)

    async def _dispatch(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes]
    ) -> tuple[str, int, bytes, list[tuple[bytes, bytes]]]:
        method, parts = scope["method"], scope["path"].rstrip("/").split("/")[2:]
        if parts in ([], ["health", "live"], ["health", "ready"]):
            _allow(method, "GET")
            return "", *self._health(parts), []
        if parts[:1] == ["repository"]:
            _allow(method, "POST")
            self._authorize(headers)
            body = await self.read_body(receive, headers.get(b"content-length"))
            return "", 200, await self._repository(parts[1:], body), []
        if parts[:1] == ["models"] and len(parts) >= 2:
            model, rest = self._find(parts[1:])
            if rest == []:
                _allow(method, "GET")
                return "", 200, encode_json(self._metadata(model)), []
            if rest == ["ready"]:
                _allow(method, "GET")
                return "", *self._model_ready(model), []
            if rest == ["infer"]:
                _allow(method, "POST")
                self._authorize(headers)
                return model.endpoint.name, *await self._infer(model, receive, headers)
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

    def _metadata(self, model: V2Model) -> dict[str, Any]:
        state = self.backend.model_state(model.model)
        ep = model.endpoint
        outputs = self._outputs.get((model.name, state.version))
        if outputs is None:  # not seen yet: what the api's return type says
            outputs = [_declared_output(ep)] if ep.returns in ("tensor", "str") else []
        versions = [state.version] if state.version else []
        return model_metadata(model.name, versions, model.platform, ep.params, outputs)

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
        try:
            result, version = await self.backend.infer(model.model, ep.name, kwargs, rows)
        except (InputError, Overloaded, _Answer):
            raise
        except Exception as exc:
            raise _model_failure(exc) from None
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


def _model_failure(exc: Exception) -> _Answer:
    """An error the api raised on this request (the batch was bisected, so it is this one's)."""
    kind = type(exc).__name__
    if kind == "OutOfMemoryError":
        return _Answer(503, f"the device ran out of memory: {exc}", [(b"retry-after", b"1")])
    if isinstance(exc, NotFound):
        return _Answer(404, str(exc))
    if isinstance(exc, (ValueError, TypeError, IndexError, KeyError, RuntimeError)):
        return _Answer(400, f"the model rejected this input: {kind}: {exc}")
    return _Answer(500, f"the api raised {kind}: {exc}")


def _error(message: str) -> bytes:
    return encode_json({"error": message})


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-length", str(len(body)).encode()), *extra]
    if not any(k == b"content-type" for k, _ in extra):
        headers.append((b"content-type", JSON.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
