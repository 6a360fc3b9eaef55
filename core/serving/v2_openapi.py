"""The Open Inference Protocol routes in the server's OpenAPI document (`/openapi.json`, `/docs`).

Each served V2 model gets its own concrete paths, so the docs page lists them by name and its
"Try it out" starts from a valid request (zeros shaped by the model's input metadata).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .v2_codec import BYTES, OCTET_STREAM, datatypes, tensor_metadata

if TYPE_CHECKING:
    from .v2 import V2Model

__all__ = ["v2_components", "v2_paths"]

_TAG = "Open Inference Protocol (V2)"
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_TEXT = {
    400: "the request does not fit the model (the message names the input)",
    401: "missing or wrong API token",
    404: "unknown model or version",
    405: "wrong method",
    413: "body larger than the server's limit",
    415: "unsupported Content-Encoding",
    500: "the api raised an error",
    503: "not ready, or overloaded (see Retry-After)",
}


def _ref(name: str) -> dict[str, Any]:
    """The schema itself, inline: the app's document holds only the core's components."""
    return v2_components()[name]


def _op(summary: str, ok: dict[str, Any] | None, codes: Sequence[int], secured: bool) -> dict:
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    if ok is not None:
        responses["200"]["content"] = {"application/json": {"schema": ok}}
    for code in sorted({*codes, *([401] if secured else [])}):
        responses[str(code)] = {"description": _TEXT[code], "content": _ERROR}
    op: dict[str, Any] = {"tags": [_TAG], "summary": summary, "responses": responses}
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def _example(model: V2Model) -> dict[str, Any]:
    inputs = []
    for p in model.endpoint.params:
        if not p.required:
            continue
        meta = tensor_metadata(p)
        shape = [1 if d == -1 else d for d in meta["shape"]]
        fill: Any = "" if meta["datatype"] == BYTES else 0
        if meta["datatype"] == "BOOL":
            fill = False
        inputs.append({**meta, "shape": shape, "data": [fill] * math.prod(shape)})
    return {"id": "1", "inputs": inputs}


def _infer_op(model: V2Model, secured: bool) -> dict[str, Any]:
    names = [p.name for p in model.endpoint.params]
    op = _op(
        f"Run {model.name} (inputs: {', '.join(names)})",
        _ref("V2InferenceResponse"),
        [400, 404, 413, 415, 500, 503],
        secured,
    )
    op["operationId"] = f"v2_infer_{model.name}"
    op["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ref("V2InferenceRequest"),
                "example": _example(model),
            },
            OCTET_STREAM: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "binary tensor data extension: the JSON request (its length "
                    "in the Inference-Header-Content-Length header), then each input's bytes",
                },
            },
        },
    }
    op["responses"]["200"]["content"][OCTET_STREAM] = {
        "schema": {"type": "string", "format": "binary"},
    }
    return op


def _version_param() -> dict[str, Any]:
    return {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}


def v2_paths(models: Sequence[V2Model], secured: bool) -> dict[str, Any]:
    """The OpenAPI path items of every V2 route of these models."""
    paths: dict[str, Any] = {
        "/v2": {"get": _op("Server metadata", _ref("V2ServerMetadata"), [], False)},
        "/v2/health/live": {"get": _op("The server is live", None, [], False)},
        "/v2/health/ready": {"get": _op("Every model is ready", None, [503], False)},
        "/v2/repository/index": {
            "post": _op(
                "Every model, its version and state", _ref("V2RepositoryIndex"), [400], secured
            )
        },
    }
    for model in models:
        base = f"/v2/models/{model.name}"
        meta = _op(f"Metadata of {model.name}", _ref("V2ModelMetadata"), [404], False)
        ready = _op(f"{model.name} is ready", None, [404, 503], False)
        infer = _infer_op(model, secured)
        paths[base] = {"get": meta}
        paths[f"{base}/ready"] = {"get": ready}
        paths[f"{base}/infer"] = {"post": infer}
        versioned = {"parameters": [_version_param()]}
        paths[base + "/versions/{model_version}"] = {**versioned, "get": meta}
        paths[base + "/versions/{model_version}/ready"] = {**versioned, "get": ready}
        paths[base + "/versions/{model_version}/infer"] = {
            **versioned,
            "post": {**infer, "operationId": f"v2_infer_{model.name}_version"},
        }
        for action in ("load", "unload"):
            op = _op(f"{action.capitalize()} {model.name}", {"type": "object"}, [400, 404], secured)
            paths[f"/v2/repository/models/{model.name}/{action}"] = {"post": op}
    return paths


def v2_components() -> dict[str, Any]:
    """The schemas the V2 paths refer to."""
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": datatypes()},
            "parameters": {"type": "object"},
            "data": {"description": "the elements, nested or flat, in row-major order"},
        },
    }
    meta_tensor = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    return {
        "V2Tensor": tensor,
        "V2InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": tensor},
                "outputs": {"type": "array", "items": {"type": "object"}},
            },
        },
        "V2InferenceResponse": {
            "type": "object",
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": tensor},
            },
        },
        "V2ServerMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "V2ModelMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": meta_tensor},
                "outputs": {"type": "array", "items": meta_tensor},
            },
        },
        "V2RepositoryIndex": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "state": {"type": "string", "enum": ["READY", "LOADING", "UNAVAILABLE"]},
                    "reason": {"type": "string"},
                },
            },
        },
    }
