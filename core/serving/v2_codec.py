"""Open Inference Protocol (KServe V2 REST) bodies: tensors in JSON and in the binary extension.

Everything here is protocol-only and knows nothing of routes or queues (`v2.py` owns those):
- `parse_infer_request` reads an `$inference_request`: JSON tensors with nested or flat `data`
  in every datatype `core/dtypes.py` maps to torch, `BYTES` (a flat list of `bytes`), and the
  binary tensor data extension (`Inference-Header-Content-Length` splits the JSON header from
  the raw little-endian tensor data; each input's `binary_data_size` says how much is its own).
- `bind_inputs` turns the tensors into an api's keyword arguments by its parameters' kinds,
  checking each against the api's input spec (a wrong shape or datatype is a 400 naming it).
- `outputs_of` turns an api's return value into named output tensors, and
  `encode_infer_response` writes the `$inference_response`, binary where the request asked
  (`binary_data` on an output, `binary_data_output` on the request).
- The metadata documents (`server_metadata`, `model_metadata`, `tensor_metadata`).

The byte formats follow the protocol's REST document and Triton's binary-data extension, which
`tritonclient.http` implements: BOOL is one byte (0 or 1), BYTES elements are a 4-byte
little-endian length and the bytes, BF16 is the top 16 bits of an FP32.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import dtypes
from .codecs import InputError, Param, TensorSpec, decode_json, decode_param, encode_json

if TYPE_CHECKING:
    import torch

__all__ = [
    "BYTES",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "OCTET_STREAM",
    "InferRequest",
    "OutputTensor",
    "RequestedOutput",
    "V2Tensor",
    "bind_inputs",
    "encode_infer_response",
    "model_metadata",
    "outputs_of",
    "parse_infer_request",
    "server_metadata",
    "tensor_metadata",
]

BYTES = dtypes.V2_BYTES
HEADER_LENGTH = "inference-header-content-length"
OCTET_STREAM = "application/octet-stream"
EXTENSIONS = ("binary_tensor_data", "model_repository")
OUTPUT_NAME = "outputs"  # a single returned value; the native route's `{"outputs": ...}` key

_UNSUPPORTED_PARAMS = {
    "shared_memory_region": "the shared-memory extension is not supported; send the data inline",
    "classification": "the classification extension is not supported; request the raw output",
}


def _bad(message: str) -> InputError:
    return InputError(message, 400)


def datatypes() -> list[str]:
    """Every datatype this server reads and writes, in the dtype table's order, then BYTES."""
    return [d.v2 for d in dtypes.DTYPES if d.v2] + [BYTES]


# -- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class V2Tensor:
    """One decoded input: a CPU `torch.Tensor`, or for BYTES a flat row-major list of `bytes`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: Any

    @property
    def is_bytes(self) -> bool:
        return self.datatype == BYTES


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's `outputs`; `binary` None follows `binary_data_output`."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    """A parsed `$inference_request`; `outputs` empty means every output the model produces."""

    id: str | None
    inputs: dict[str, V2Tensor]
    outputs: tuple[RequestedOutput, ...] = ()
    binary_output: bool = False
    parameters: dict[str, Any] | None = None

    def binary_for(self, name: str) -> bool:
        """Whether output `name` goes in the binary part of the response."""
        for out in self.outputs:
            if out.name == name and out.binary is not None:
                return out.binary
        return self.binary_output


def _header_length(value: str | bytes | None, size: int) -> int | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        length = int(text.strip())
    except ValueError:
        raise _bad(f"Inference-Header-Content-Length is not a number: {text!r}") from None
    if not 0 <= length <= size:
        raise _bad(
            f"Inference-Header-Content-Length is {length}, but the body has only {size} bytes"
        )
    return length


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}: 'parameters' must be an object")
    for key, why in _UNSUPPORTED_PARAMS.items():
        if key in value:
            raise _bad(f"{where}: {why}")
    return value


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"{where}: parameter {key!r} must be true or false")
    return value


def parse_infer_request(body: bytes, header_length: str | bytes | None = None) -> InferRequest:
    """Read an `$inference_request` body (with its binary part when `header_length` is given).

    Example:
        >>> req = parse_infer_request(b'{"inputs": [{"name": "x", "shape": [2],'
        ...                           b' "datatype": "INT32", "data": [1, 2]}]}')
        >>> req.inputs["x"].value
        tensor([1, 2], dtype=torch.int32)
    """
    length = _header_length(header_length, len(body))
    head = body if length is None else body[:length]
    binary = memoryview(body)[len(head) :]
    doc = decode_json(head)
    if not isinstance(doc, dict):
        raise _bad("the inference request must be a JSON object with an 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    params = _parameters(doc.get("parameters"), "request")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise _bad("'inputs' must be a non-empty list of tensors")
    booleans = b"true" in head or b"false" in head  # only then walk numeric data for them
    inputs: dict[str, V2Tensor] = {}
    offset = 0
    for index, item in enumerate(items):
        tensor, used = _parse_input(index, item, binary, offset, booleans)
        if tensor.name in inputs:
            raise _bad(f"input {tensor.name!r} is given twice")
        inputs[tensor.name] = tensor
        offset += used
    if offset != len(binary):
        raise _bad(
            f"the body holds {len(binary)} bytes after the JSON header, but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_parse_outputs(doc.get("outputs")),
        binary_output=bool(_flag(params, "binary_data_output", "request")),
        parameters=params,
    )


def _parse_input(
    index: int, item: Any, binary: memoryview, offset: int, booleans: bool
) -> tuple[V2Tensor, int]:
    """One `$request_input` -> (tensor, bytes of the binary part it used)."""
    if not isinstance(item, dict):
        raise _bad(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"inputs[{index}] needs a 'name' string")
    where = f"input {name!r}"
    datatype = str(item.get("datatype"))
    if datatype != BYTES and dtypes.by_v2(datatype) is None:
        raise _bad(f"{where}: unknown datatype {datatype!r}; use one of {', '.join(datatypes())}")
    shape = _shape(item.get("shape"), where)
    params = _parameters(item.get("parameters"), where)
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise _bad(f"{where}: give 'data', or binary_data_size with the binary extension")
        value = decode_json_data(where, datatype, shape, item["data"], booleans)
        return V2Tensor(name, datatype, shape, value), 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad(f"{where}: binary_data_size must be a non-negative integer")
    if "data" in item:
        raise _bad(f"{where}: give either 'data' or binary_data_size, not both")
    if offset + size > len(binary):
        raise _bad(
            f"{where}: binary_data_size is {size}, but only {len(binary) - offset} bytes of "
            "binary data are left (is Inference-Header-Content-Length set?)"
        )
    raw = binary[offset : offset + size]
    return V2Tensor(name, datatype, shape, decode_binary_data(where, datatype, shape, raw)), size


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise _bad(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def _parse_outputs(value: Any) -> tuple[RequestedOutput, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad("'outputs' must be a list of {\"name\": ...} objects")
    outputs = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"outputs[{index}] needs a 'name' string")
        where = f"output {item['name']!r}"
        params = _parameters(item.get("parameters"), where)
        outputs.append(RequestedOutput(item["name"], _flag(params, "binary_data", where)))
    return tuple(outputs)


# -- tensor data --------------------------------------------------------------------------------


def decode_json_data(
    where: str, datatype: str, shape: tuple[int, ...], data: Any, booleans: bool = True
) -> Any:
    """JSON `data` (nested or flat, row-major) -> a tensor of `shape`, or BYTES as a flat list.

    `booleans` False promises the body holds no `true`/`false`, which skips a Python walk that
    refuses booleans in numeric data (numpy would read `[true, 2]` as `[1, 2]`).
    """
    if datatype == BYTES:
        items = _flatten_strings(where, data)
        _check_count(where, len(items), shape)
        return items
    dtype = dtypes.by_v2(datatype)
    assert dtype is not None
    if booleans and dtype.kind != "bool" and _holds_boolean(data):
        raise _bad(f"{where}: expected numbers for {datatype}, got a boolean")
    arr = _json_array(where, dtype, data)
    _check_count(where, arr.size, shape)
    import torch

    tensor = torch.from_numpy(arr.reshape(shape))
    if dtype.name == "bfloat16":
        tensor = tensor.to(torch.bfloat16)
        if not bool(torch.isfinite(tensor).all()):
            raise _bad(f"{where}: a value is out of range for BF16")
    return tensor


def _check_count(where: str, got: int, shape: tuple[int, ...]) -> None:
    want = math.prod(shape)
    if got != want:
        raise _bad(f"{where}: data holds {got} elements, but shape {list(shape)} needs {want}")


def _flatten_strings(where: str, data: Any) -> list[bytes]:
    out: list[bytes] = []
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, str):
            out.append(value.encode())
        else:
            raise _bad(f"{where}: BYTES data must be strings, got {type(value).__name__}")
    return out


def _holds_boolean(data: Any) -> bool:
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, bool):
            return True
    return False


def _json_array(where: str, dtype: dtypes.DType, data: Any) -> np.ndarray:
    """Validated numpy array of the row's dtype (float32 for bfloat16, numpy has none)."""
    name = dtype.v2
    try:
        arr = np.asarray(data)
    except ValueError:
        raise _bad(f"{where}: data is not a rectangular nested list") from None
    kind = arr.dtype.kind
    if dtype.kind == "bool":
        if kind != "b":
            raise _bad(f"{where}: expected true/false for BOOL")
        return arr
    if dtype.kind in ("int", "uint"):
        if kind not in "iu":
            exact = _exact_integers(where, name, data) if kind in "fO" else None
            if exact is None:
                raise _bad(f"{where}: expected integers for {name}")
            arr = exact
        low, high = dtype.value_range or (0, 0)
        if arr.size and (int(arr.min()) < low or int(arr.max()) > high):
            raise _bad(f"{where}: a value is out of range for {name} [{low}, {high}]")
        return arr.astype(dtype.numpy or "int64", copy=False)
    if kind == "O":  # huge integers, or a null that numpy keeps as None
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise _bad(f"{where}: expected numbers for {name}") from None
    elif kind not in "iuf":
        raise _bad(f"{where}: expected numbers for {name}")
    with np.errstate(over="ignore"):
        arr = arr.astype(dtype.numpy or "float32", copy=False)
    if not np.isfinite(arr).all():  # JSON has no NaN/inf: it was a null or out of range
        raise _bad(f"{where}: a null, or a value out of range for {name}")
    return arr


def _exact_integers(where: str, name: str | None, data: Any) -> np.ndarray | None:
    """Integers numpy read as float or object (mixing 2**63 with small ones): keep them exact."""
    flat: list[Any] = []
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            flat.append(value)
        else:
            return None
    negative = any(v < 0 for v in flat)
    if any(not -(2**63) <= v < 2**64 for v in flat) or (negative and any(v >= 2**63 for v in flat)):
        raise _bad(f"{where}: a value is out of range for {name}")
    return np.array(flat, dtype=np.int64 if negative else np.uint64)


def decode_binary_data(where: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> Any:
    """The binary extension's bytes of one input -> a tensor of `shape`, or BYTES as a list."""
    count = math.prod(shape)
    if datatype == BYTES:
        items = _split_bytes(where, raw)
        _check_count(where, len(items), shape)
        return items
    dtype = dtypes.by_v2(datatype)
    assert dtype is not None
    want = count * dtype.itemsize
    if len(raw) != want:
        raise _bad(
            f"{where}: binary_data_size is {len(raw)} bytes, but shape {list(shape)} of "
            f"{datatype} needs {want}"
        )
    import torch

    if count == 0:
        return torch.empty(shape, dtype=dtype.torch)
    if dtype.kind == "bool" and bytes(raw).translate(None, b"\x00\x01"):
        raise _bad(f"{where}: BOOL bytes must be 0 or 1")
    # A copy: the tensor must own writable memory (models may work in place on their input).
    return torch.frombuffer(bytearray(raw), dtype=dtype.torch).reshape(shape)


def _split_bytes(where: str, raw: memoryview) -> list[bytes]:
    items = []
    offset, size = 0, len(raw)
    while offset < size:
        if offset + 4 > size:
            raise _bad(f"{where}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > size:
            raise _bad(f"{where}: a BYTES element of {length} bytes runs past its data")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items


# -- binding to an api's parameters -------------------------------------------------------------


def bind_inputs(request: InferRequest, params: Sequence[Param], batch: bool) -> dict[str, Any]:
    """The api's keyword arguments from the request's tensors, checked against its specs.

    A tensor parameter takes a numeric tensor; a `list[Tensor]` one (batch apis) the rows of one;
    `str` one BYTES element (`list[str]`: all of them); `int`/`float`/`bool` one element;
    `dict`/`list` one BYTES element holding JSON; an image one BYTES element holding the file.
    """
    names = [p.name for p in params]
    for name in request.inputs:
        if name not in names:
            raise _bad(f"unknown input {name!r}; this model's inputs are: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for p in params:
        tensor = request.inputs.get(p.name)
        if tensor is None:
            if p.required:
                raise _bad(f"missing input {p.name!r}; this model's inputs are: {', '.join(names)}")
            kwargs[p.name] = p.default
            continue
        kwargs[p.name] = _bind(p, tensor)
    return kwargs


def _bind(p: Param, t: V2Tensor) -> Any:
    where = f"input {p.name!r}"
    if p.kind == "tensor" or (p.kind == "list" and p.item_kind == "tensor"):
        if t.is_bytes:
            raise _bad(f"{where}: expected a numeric tensor, got BYTES")
        item = p.kind == "list"
        check_spec(where, p.spec, t, rows_first=item)
        return list(t.value.unbind(0)) if item else t.value
    if p.kind == "list" and p.item_kind in ("str", "int", "float", "bool"):
        values = _scalars(where, t, p.item_kind)
        return decode_param(p, {p.name: values}, batch=True)
    if p.kind in ("str", "int", "float", "bool"):
        values = _scalars(where, t, p.kind)
        if len(values) != 1:
            raise _bad(f"{where}: expected one element for a {p.kind}, got shape {list(t.shape)}")
        return decode_param(p, {p.name: values[0]})
    if p.kind == "image":
        return decode_param(p, {p.name: _one_bytes(where, t, "the image file")})
    if not t.is_bytes:  # dict / list / any from a numeric tensor
        return t.value if p.kind == "any" else decode_param(p, {p.name: t.value.tolist()})
    return decode_param(p, {p.name: decode_json(_one_bytes(where, t, "a JSON document"))})


def _one_bytes(where: str, t: V2Tensor, what: str) -> bytes:
    if not t.is_bytes or len(t.value) != 1:
        raise _bad(f"{where}: expected one BYTES element holding {what}")
    return t.value[0]  # type: ignore[no-any-return]


def _scalars(where: str, t: V2Tensor, kind: str) -> list[Any]:
    """A tensor's elements as Python values of `kind` (`str` from BYTES, UTF-8)."""
    if kind == "str":
        if not t.is_bytes:
            raise _bad(f"{where}: a str input is BYTES, got {t.datatype}")
        try:
            return [b.decode() for b in t.value]
        except UnicodeDecodeError:
            raise _bad(f"{where}: BYTES element is not UTF-8 text") from None
    if t.is_bytes:
        raise _bad(f"{where}: expected a numeric tensor for a {kind}, got BYTES")
    dtype = dtypes.of(t.value.dtype)
    allowed = {"int": ("int", "uint"), "float": ("float", "int", "uint"), "bool": ("bool",)}[kind]
    if dtype is None or dtype.kind not in allowed:
        raise _bad(f"{where}: a {kind} input cannot be {t.datatype}")
    values = t.value.reshape(-1).tolist()
    return [float(v) for v in values] if kind == "float" else values


def check_spec(where: str, spec: TensorSpec | None, t: V2Tensor, rows_first: bool = False) -> None:
    """Raise a 400 naming the input unless its datatype and shape fit the api's input spec.

    `rows_first`: the spec describes one item of a `list[Tensor]` and `t` stacks the items.
    """
    if spec is None:
        return
    want = dtypes.find(spec.dtype) if spec.dtype else None
    if want is not None and want.v2 != t.datatype:
        raise _bad(
            f"{where}: expected datatype {want.v2 or want.name} ({want.name}, the model's input "
            f"spec), got {t.datatype}"
        )
    if spec.shape is None:
        return
    got = t.shape[1:] if rows_first else t.shape
    if len(got) != len(spec.shape) or any(
        w not in (-1, g) for w, g in zip(spec.shape, got, strict=False)
    ):
        shown = [-1, *spec.shape] if rows_first else list(spec.shape)
        raise _bad(f"{where}: expected shape {shown} (the model's input spec), got {list(t.shape)}")


# -- responses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTensor:
    """One named output: a CPU contiguous tensor, or for BYTES a flat list of `bytes`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: Any


def outputs_of(result: Any) -> list[OutputTensor]:
    """An api's return value as named outputs.

    A tensor (or anything tensor-like) is the output `outputs`; a dict gives one output per key;
    a tuple of tensors `outputs_0`, `outputs_1`, ...; a list of dicts with the same keys (what a
    batch api returns) one output per key, its items stacked. `str` values are BYTES; anything
    that is no tensor is one BYTES element per item holding its JSON.
    """
    import torch

    if result is None:
        return []
    if isinstance(result, dict):
        return [_output(str(k), v) for k, v in result.items()]
    if isinstance(result, tuple) and result and all(isinstance(v, torch.Tensor) for v in result):
        return [_output(f"{OUTPUT_NAME}_{i}", v) for i, v in enumerate(result)]
    if isinstance(result, list) and result and all(isinstance(v, dict) for v in result):
        keys = list(result[0])
        if keys and all(list(v) == keys for v in result):
            return [_output(str(k), [v[k] for v in result]) for k in keys]
    return [_output(OUTPUT_NAME, result)]


def _output(name: str, value: Any) -> OutputTensor:
    import torch

    if isinstance(value, (str, bytes)):
        return OutputTensor(name, BYTES, (1,), [_utf8(value)])
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, np.generic):
        value = torch.from_numpy(np.asarray(value).reshape(1))
    elif isinstance(value, (bool, int, float)):
        kind = (
            "bool" if isinstance(value, bool) else "int64" if isinstance(value, int) else "float64"
        )
        value = torch.tensor([value], dtype=getattr(torch, kind))
    elif isinstance(value, (list, tuple)):
        stacked = _stack(value)
        if stacked is None:
            if value and all(isinstance(v, (str, bytes)) for v in value):
                return OutputTensor(name, BYTES, (len(value),), [_utf8(v) for v in value])
            return OutputTensor(name, BYTES, (len(value),), [encode_json(v) for v in value])
        value = stacked
    if not isinstance(value, torch.Tensor):
        return OutputTensor(name, BYTES, (1,), [encode_json(value)])
    return _tensor_output(name, value)


def _utf8(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _stack(items: Sequence[Any]) -> Any:
    """A list of same-shaped tensors or a rectangular list of numbers as one tensor, else None."""
    import torch

    if not items:
        return None
    if all(isinstance(v, torch.Tensor) for v in items):
        shapes = {tuple(v.shape) for v in items}
        dtypes_ = {v.dtype for v in items}
        return torch.stack(list(items)) if len(shapes) == 1 and len(dtypes_) == 1 else None
    if any(isinstance(v, (str, bytes, dict)) for v in items):
        return None
    try:
        arr = np.asarray(items)
    except (ValueError, TypeError):
        return None
    return torch.from_numpy(np.ascontiguousarray(arr)) if arr.dtype.kind in "biuf" else None


def _tensor_output(name: str, tensor: torch.Tensor) -> OutputTensor:
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    row = dtypes.of(t.dtype)
    if row is not None and row.v2 is None and row.kind == "float":
        t, row = t.float(), dtypes.lookup("float32")  # float8: FP32 holds it exactly
    if row is None or row.v2 is None:
        raise InputError(
            f"output {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, which the Open "
            "Inference Protocol has no datatype for; convert it in the api",
            500,
        )
    return OutputTensor(name, row.v2, tuple(t.shape), t.contiguous())


def _raw(out: OutputTensor) -> bytes:
    """An output's bytes for the binary extension."""
    import torch

    if out.datatype == BYTES:
        return b"".join(struct.pack("<I", len(b)) + b for b in out.value)
    t = out.value
    if t.dtype is torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()  # type: ignore[no-any-return]


def _json_data(out: OutputTensor) -> Any:
    if out.datatype != BYTES:
        return out.value.reshape(-1)  # encode_json writes tensors as flat numbers (bf16 as fp32)
    try:
        return [b.decode() for b in out.value]
    except UnicodeDecodeError:
        raise _bad(
            f"output {out.name!r} holds bytes that are not UTF-8, which JSON cannot carry; "
            'request it with {"parameters": {"binary_data": true}}'
        ) from None


def _select(request: InferRequest, outputs: list[OutputTensor]) -> list[OutputTensor]:
    if not request.outputs:
        return outputs
    by_name = {o.name: o for o in outputs}
    chosen = []
    for want in request.outputs:
        if want.name not in by_name:
            have = ", ".join(by_name) or "none"
            raise _bad(f"unknown output {want.name!r}; this model's outputs are: {have}")
        chosen.append(by_name[want.name])
    return chosen


def encode_infer_response(
    model_name: str, model_version: str | None, request: InferRequest, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The `$inference_response` body, and the JSON header's length when a binary part follows
    (send it as `Inference-Header-Content-Length`; None means the body is all JSON)."""
    docs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in _select(request, outputs):
        doc: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if request.binary_for(out.name):
            raw = _raw(out)
            doc["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            doc["data"] = _json_data(out)
        docs.append(doc)
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = docs
    head = encode_json(response)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


# -- metadata -----------------------------------------------------------------------------------


def server_metadata(version: str) -> dict[str, Any]:
    """The `$metadata_server_response` of `GET /v2`."""
    return {"name": "torchshelf", "version": version, "extensions": list(EXTENSIONS)}


_SCALAR_DATATYPES = {"str": BYTES, "int": "INT64", "float": "FP64", "bool": "BOOL"}


def tensor_metadata(p: Param) -> dict[str, Any]:
    """The `$metadata_tensor` of one api parameter: what `bind_inputs` takes for it."""
    if p.kind == "tensor" or (p.kind == "list" and p.item_kind == "tensor"):
        spec = p.spec
        row = dtypes.find(spec.dtype) if spec and spec.dtype else None
        datatype = row.v2 if row is not None and row.v2 else "FP32"
        shape = list(spec.shape) if spec and spec.shape is not None else [-1]
        if p.kind == "list":
            shape = [-1, *shape] if spec and spec.shape is not None else [-1, -1]
        return {"name": p.name, "datatype": datatype, "shape": shape}
    if p.kind == "list" and p.item_kind in _SCALAR_DATATYPES:
        return {"name": p.name, "datatype": _SCALAR_DATATYPES[p.item_kind], "shape": [-1]}
    return {"name": p.name, "datatype": _SCALAR_DATATYPES.get(p.kind, BYTES), "shape": [1]}


def output_metadata(outputs: Sequence[OutputTensor], batch: bool) -> list[dict[str, Any]]:
    """Output metadata as seen in a response (a batch api's first dimension is free: -1)."""
    return [
        {
            "name": o.name,
            "datatype": o.datatype,
            "shape": [-1, *o.shape[1:]] if batch and o.shape else list(o.shape),
        }
        for o in outputs
    ]


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    params: Sequence[Param],
    outputs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The `$metadata_model_response` of `GET /v2/models/<name>`."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [tensor_metadata(p) for p in params],
        "outputs": outputs,
    }
