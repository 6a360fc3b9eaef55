"""The OpenAPI 3.1 document and the `/schema` summary of a served target.

Request schemas come from each api's type hints and, for tensors, from the stored signature's
input spec (fixed dims become exact `minItems`/`maxItems`), so fuzzers and generated clients send
bodies the server can accept. `/schema` is the same facts in a flat shape for `torchshelf.Client`
and `shelf bench --url`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import dtypes
from .codecs import SAFETENSORS, Param, TensorSpec
from .streaming import stream_content

if TYPE_CHECKING:
    from .options import ServeOptions
    from .registry import ModelRegistry
    from .target import Endpoint

__all__ = ["openapi_document", "schema_document"]

_SCALAR = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _number_schema(spec: TensorSpec | None) -> dict[str, Any]:
    # A float number at or past the dtype's overflow rounds to infinity, which the server refuses
    # (422), so the schema says so and fuzzers do not count that refusal as a valid body rejected.
    row = dtypes.find(spec.dtype) if spec is not None else None
    return row.json_schema() if row is not None else {"type": "number"}


def tensor_schema(spec: TensorSpec | None, free_first: bool = False) -> dict[str, Any]:
    """A nested-list schema; with a spec, each fixed dimension is an exact array length."""
    if spec is None or spec.shape is None:
        return {
            "type": "array",
            "description": "a tensor as a nested list of numbers",
            "items": {},
        }
    schema: dict[str, Any] = _number_schema(spec)
    for i, dim in reversed(list(enumerate(spec.shape))):
        level: dict[str, Any] = {"type": "array", "items": schema}
        if dim != -1 and not (free_first and i == 0):
            level["minItems"] = level["maxItems"] = dim
        elif dim == -1:
            level["minItems"] = 1
        schema = level
    schema["description"] = f"a tensor as a nested list ({spec.describe()})"
    return schema


def _value_schema(kind: str | None, spec: TensorSpec | None = None) -> dict[str, Any]:
    if kind == "tensor":
        return tensor_schema(spec)
    if kind in _SCALAR:
        return {"type": _SCALAR[kind]}
    if kind == "dict":
        return {"type": "object"}
    if kind == "list":
        return {"type": "array", "items": {}}
    if kind == "image":
        return {"type": "string", "description": "a base64-encoded image"}
    return {}


def _param_schema(p: Param, batch: bool) -> dict[str, Any]:
    if p.kind == "list" and p.item_kind:
        return {
            "type": "array",
            "items": _value_schema(p.item_kind, p.spec),
            **({"minItems": 1} if batch else {}),
        }
    return _value_schema(p.kind, p.spec)


def _request_body(ep: Endpoint) -> dict[str, Any]:
    props = {p.name: _param_schema(p, ep.batch) for p in ep.params}
    required = [p.name for p in ep.params if p.required]
    obj: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        obj["required"] = required
    content: dict[str, Any] = {"application/json": {"schema": obj}}
    if any(p.kind == "tensor" or p.item_kind == "tensor" for p in ep.params):
        content[SAFETENSORS] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "a safetensors file whose tensors are named by the parameters",
            }
        }
    if any(p.kind == "image" for p in ep.params):
        content["image/*"] = {"schema": {"type": "string", "format": "binary"}}
    return {"required": bool(required), "content": content}


def _response_schema(ep: Endpoint) -> dict[str, Any]:
    if ep.wrap_outputs:
        return {
            "type": "object",
            "properties": {"outputs": {"description": "the model's output as nested lists"}},
            "required": ["outputs"],
        }
    if ep.returns == "tensor":
        return {"type": "array", "description": "a tensor as a nested list", "items": {}}
    schema = _value_schema(ep.returns)
    if ep.batch and ep.returns == "list":
        schema = {"type": "array", "description": "one result per item sent, in order", "items": {}}
    return schema


def _errors(codes: list[int]) -> dict[str, Any]:
    text = {
        400: "malformed body",
        401: "missing or wrong API token",
        408: "the body did not arrive within the server's timeout",
        413: "body larger than the server's limit",
        415: "unsupported Content-Type",
        422: "a field is missing or has the wrong type, shape or dtype",
        500: "the api raised an error",
        503: "overloaded, not ready or shutting down; see Retry-After",
    }
    return {
        str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR_REF}}}
        for c in codes
    }


def _api_operation(
    ep: Endpoint, operation_id: str, codes: list[int], secured: bool
) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": _response_schema(ep)}}
    if ep.returns == "tensor" or ep.wrap_outputs:
        ok[SAFETENSORS] = {"schema": {"type": "string", "format": "binary"}}
    what = "the result"
    if ep.stream:
        ok, what = stream_content(_value_schema(ep.returns)), "the items, sent as they are yielded"
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": (ep.doc.splitlines()[0] if ep.doc else f"Call {ep.name}"),
        "requestBody": _request_body(ep),
        "responses": {
            "200": {
                "description": f"{what} (header X-Model-Version: the version that computed it)",
                "content": ok,
            },
            **_errors(sorted(codes)),
        },
        "x-torchshelf": {
            "stream": ep.stream,
            "batch": ep.batch,
            "max_batch_size": ep.max_batch_size,
            "max_latency_ms": ep.max_latency_ms,
            "batch_dim": ep.batch_dim,
            "input_spec": ep.input_spec,
        },
    }
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def _plain(summary: str, secured: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}}}
    if secured:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = {"description": "missing or wrong API token"}
    return {"get": op}


def title_of(registry: ModelRegistry) -> str:
    """The target's title with one model; the served names with several."""
    slots = list(registry.slots.values())
    return slots[0].served.title if len(slots) == 1 else ", ".join(registry.names())


def openapi_document(
    registry: ModelRegistry,
    options: ServeOptions,
    extra_paths: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every api of every model, the health/metrics routes and
    `extra_paths` (other protocols' routes)."""
    from .. import __version__

    paths: dict[str, Any] = {}
    codes = [400, 408, 413, 415, 422, 500, 503] + ([401] if options.api_token else [])
    for slot in registry.slots.values():
        for ep in slot.endpoints:
            op_id = ep.name if not slot.prefix else f"{slot.name}_{ep.name}"
            op = _api_operation(ep, op_id, codes, bool(options.api_token))
            paths[slot.path(ep.name)] = {"post": op}
    paths["/healthz"] = _plain("The process is alive")
    paths["/readyz"] = _plain("The models are loaded and warmed up (503 until then)")
    paths["/readyz"]["get"]["responses"]["503"] = {"description": "still loading"}
    paths["/metrics"] = _plain(
        "Prometheus metrics", secured=bool(options.api_token and options.metrics_auth)
    )
    paths.update(extra_paths or {})
    devices = sorted({s.device for s in registry.slots.values()})
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"torchshelf: {title_of(registry)}",
            "version": __version__,
            "description": f"Served by `shelf serve` on {', '.join(devices)}.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }
    if options.api_token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _api_summary(ep: Endpoint, path: str) -> dict[str, Any]:
    return {
        "name": ep.name,
        "path": path,
        "batch": ep.batch,
        "max_batch_size": ep.max_batch_size,
        "max_latency_ms": ep.max_latency_ms,
        "batch_dim": ep.batch_dim,
        "returns": ep.returns,
        "stream": ep.stream,
        "wraps_outputs": ep.wrap_outputs,
        "input_spec": ep.input_spec,
        "params": [
            {
                "name": p.name,
                "kind": p.kind,
                "item_kind": p.item_kind,
                "required": p.required,
                "shape": list(p.spec.shape) if p.spec and p.spec.shape is not None else None,
                "dtype": p.spec.dtype if p.spec else None,
            }
            for p in ep.params
        ],
    }


def schema_document(registry: ModelRegistry, options: ServeOptions) -> dict[str, Any]:
    """A flat description of the apis, for the client and `shelf bench --url`.

    With one model: its kind, title, device and apis. With several, `kind` is "models", `apis`
    lists every model's apis (each with its `model` and route), and `models` each model's.
    """
    slots = list(registry.slots.values())
    if len(slots) == 1:
        slot = slots[0]
        return {
            "kind": slot.served.kind,
            "name": slot.name,
            "target": slot.served.title,
            "device": slot.device,
            "version": slot.version,
            "apis": [_api_summary(ep, slot.path(ep.name)) for ep in slot.endpoints],
        }
    models: list[dict[str, Any]] = [
        {
            "name": s.name,
            "kind": s.served.kind,
            "target": s.served.title,
            "device": s.device,
            "version": s.version,
            "state": s.state,
            "apis": [_api_summary(ep, s.path(ep.name)) for ep in s.endpoints],
        }
        for s in slots
    ]
    return {
        "kind": "models",
        "target": title_of(registry),
        "device": ", ".join(sorted({s.device for s in slots})),
        "apis": [dict(api, model=m["name"]) for m in models for api in m["apis"]],
        "models": models,
    }
