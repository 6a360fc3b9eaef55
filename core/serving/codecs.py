"""Request and response bodies: JSON (tensors as nested lists), safetensors and images.

Decoding is driven by an api's type hints (`torch.Tensor`, `str`, `int`, `float`, `bool`, `dict`,
`list`, `list[X]`, `PIL.Image.Image`) and, for tensors, by an optional input spec
(`{"shape": [-1, 64], "dtype": "float32"}`, -1 = free). Every problem with a body raises
`InputError`, which carries the HTTP status and a message that names the field and the fix.

JSON goes through orjson when it is installed: nested lists are decoded with numpy (3x faster than
`torch.tensor` on lists) and tensors are encoded straight from their numpy view.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import io
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import dtypes

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in the `fast` extra
    orjson = None  # type: ignore[assignment]

__all__ = [
    "JSON",
    "SAFETENSORS",
    "InputError",
    "Param",
    "TensorSpec",
    "decode_json",
    "decode_param",
    "decode_safetensors",
    "encode_json",
    "encode_safetensors",
    "params_of",
    "refuse_booleans",
    "return_kind",
]

JSON = "application/json"
SAFETENSORS = "application/vnd.safetensors"


class InputError(Exception):
    """A request body the server cannot use; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """The expected shape (full, -1 = free) and dtype of one tensor input."""

    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    @classmethod
    def from_signature(cls, spec: Any) -> TensorSpec | None:
        """Build from a store signature's `input_spec` (None or a list of specs -> None)."""
        if not isinstance(spec, dict):
            return None
        shape = spec.get("shape")
        dtype = spec.get("dtype")
        row = dtypes.find(dtype)
        dtype = row.name if row is not None else None
        return cls(tuple(int(d) for d in shape) if shape is not None else None, dtype)

    def describe(self) -> str:
        """E.g. `shape [-1, 64], float32`."""
        parts = []
        if self.shape is not None:
            parts.append(f"shape {list(self.shape)}")
        if self.dtype:
            parts.append(self.dtype)
        return ", ".join(parts) or "any tensor"

    def torch_dtype(self) -> Any:
        """The torch dtype, or None (cached in the table: this is on the per-request path)."""
        row = dtypes.find(self.dtype)
        return row.torch if row is not None else None

    @functools.cached_property
    def _fixed(self) -> tuple[int, tuple[tuple[int, int], ...]] | None:
        """(rank, (index, size) of each fixed dimension), or None without a shape."""
        if self.shape is None:
            return None
        return len(self.shape), tuple((i, d) for i, d in enumerate(self.shape) if d != -1)

    def check_shape(self, name: str, shape: Any) -> None:
        """Raise `InputError` unless `shape` (a tuple or torch.Size) fits this spec."""
        fixed = self._fixed
        if fixed is None:
            return
        rank, dims = fixed
        if len(shape) != rank or any(shape[i] != d for i, d in dims):
            raise InputError(f"{name}: expected shape {list(self.shape)}, got {list(shape)}")  # type: ignore[arg-type]

    def check(self, name: str, tensor: Any) -> None:
        """Raise `InputError` unless `tensor` matches this spec."""
        if self.dtype is not None and tensor.dtype is not self.torch_dtype():
            raise InputError(
                f"{name}: expected dtype {self.dtype}, got {str(tensor.dtype).removeprefix('torch.')}"
            )
        self.check_shape(name, tensor.shape)


# -- type hints ---------------------------------------------------------------------------------

KINDS = ("tensor", "str", "int", "float", "bool", "dict", "list", "image", "any")


@dataclass(frozen=True)
class Param:
    """One api parameter: its JSON key, what it decodes to, and (for `list[X]`) the item kind."""

    name: str
    kind: str
    item_kind: str | None = None
    required: bool = True
    default: Any = None
    spec: TensorSpec | None = None


def _kind_of(hint: Any) -> tuple[str, str | None]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _kind_of(args[0]) if len(args) == 1 else ("any", None)
    if origin is typing.Annotated:
        return _kind_of(typing.get_args(hint)[0])
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        item_args = typing.get_args(hint)
        return "list", (_kind_of(item_args[0])[0] if item_args else None)
    if origin is dict or hint is dict:
        return "dict", None
    if hint in (str, int, float, bool):
        return hint.__name__, None
    mod = getattr(hint, "__module__", "") or ""
    qual = getattr(hint, "__qualname__", "") or ""
    if mod.startswith("torch") and qual == "Tensor":
        return "tensor", None
    if mod.startswith("PIL") and qual == "Image":
        return "image", None
    return "any", None


def _annotated_spec(hint: Any) -> TensorSpec | None:
    """`Annotated[torch.Tensor, {"shape": [-1, 64], "dtype": "float32"}]` -> a spec."""
    if typing.get_origin(hint) is not typing.Annotated:
        return None
    for meta in typing.get_args(hint)[1:]:
        if isinstance(meta, TensorSpec):
            return meta
        if isinstance(meta, dict) and ("shape" in meta or "dtype" in meta):
            return TensorSpec.from_signature(meta)
    return None


def params_of(func: Callable[..., Any], specs: dict[str, TensorSpec] | None = None) -> list[Param]:
    """The decodable parameters of a (bound or unbound) method, from its type hints."""
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable forward refs: fall back to no hints
        hints = {}
    out = []
    for p in sig.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(p.name, Any)
        kind, item = _kind_of(hint)
        spec = (specs or {}).get(p.name) or _annotated_spec(hint)
        required = p.default is inspect.Parameter.empty
        out.append(
            Param(
                p.name,
                kind,
                item,
                required,
                None if required else p.default,
                spec,
            )
        )
    return out


def return_kind(func: Callable[..., Any]) -> str:
    """What the api returns, as one of `KINDS` (for the OpenAPI document and the client); for a
    streaming api (a generator), what each item is."""
    from .hints import is_stream_function, stream_item_hint

    if is_stream_function(func):
        return _kind_of(stream_item_hint(func))[0]
    try:
        hint = typing.get_type_hints(func).get("return", Any)
    except Exception:
        return "any"
    return _kind_of(hint)[0]


# -- decoding -----------------------------------------------------------------------------------


def decode_json(body: bytes) -> Any:
    """Parse a JSON body; malformed JSON is a 400 that says where it broke."""
    if not body:
        raise InputError("the request body is empty: send a JSON object", 400)
    try:
        return orjson.loads(body) if orjson is not None else json.loads(body)
    except ValueError as exc:
        raise InputError(f"malformed JSON body: {exc}", 400) from None


def _tensor_from_list(name: str, value: Any, spec: TensorSpec | None) -> Any:
    import torch

    if not isinstance(value, (list, int, float)):
        raise InputError(
            f"{name}: expected a tensor as a nested list of numbers, got {type(value).__name__}"
        )
    row = dtypes.find(spec.dtype) if spec is not None else None
    try:
        arr = np.asarray(value) if row is None else _array_for(name, value, row)
    except ValueError as exc:
        raise InputError(f"{name}: not a rectangular nested list of numbers ({exc})") from None
    if row is None:
        # No spec: numbers become float32, what nearly every model takes (JSON cannot tell 1 from
        # 1.0 reliably); declare a dtype with Annotated[Tensor, {...}].
        if arr.dtype.kind in "fiu":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind != "b":
            raise InputError(f"{name}: expected a nested list of numbers")
    if spec is not None:
        spec.check_shape(name, arr.shape)  # the dtype is the spec's: it was decoded to it
    tensor = torch.from_numpy(arr)
    if row is not None and row.numpy is None:
        tensor = tensor.to(row.torch)  # bfloat16, float8: numpy has no such dtype
        if not torch.isfinite(tensor.float()).all():
            raise InputError(f"{name}: null or out-of-range value for dtype {row.name}")
    return tensor


def _array_for(name: str, value: Any, row: dtypes.DType) -> Any:
    """A nested list -> a numpy array of the row's dtype (float32 where numpy has none)."""
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if row.kind in ("float", "complex"):
        # Numbers only: numpy would read "1.5" and true as floats, and raise TypeError on {}.
        if kind not in "iuf" and not (kind == "O" and _all_numbers(value)):
            raise InputError(f"{name}: expected a nested list of numbers for dtype {row.name}")
        # torch saturates some float8 casts silently, so the range is checked before the cast.
        if (
            row.numpy is None
            and row.overflow is not None
            and not (np.abs(arr.astype(np.float64, copy=False)) < row.overflow).all()
        ):
            raise InputError(f"{name}: null or out-of-range value for dtype {row.name}")
        arr = arr.astype(row.numpy or "float32", copy=False)
        # JSON has no NaN/inf, so a non-finite value was a null or out of the dtype's range.
        # (One float64 sum is finite iff every item is, and costs one numpy call, not two.)
        total = arr.sum(dtype=np.complex128 if row.kind == "complex" else np.float64)
        if not (math.isfinite(total.real) and math.isfinite(total.imag)):
            raise InputError(f"{name}: null or out-of-range value for dtype {row.name}")
        return arr
    if row.kind in ("int", "uint") and kind not in "iu":
        raise InputError(f"{name}: expected integers for dtype {row.name}")
    if row.kind == "bool" and kind != "b":
        raise InputError(f"{name}: expected booleans for dtype {row.name}")
    if kind not in "iub":
        raise InputError(f"{name}: expected a nested list of numbers")
    if row.value_range is not None and arr.size and kind in "iu":
        low, high = row.value_range
        if int(arr.min()) < low or int(arr.max()) > high:
            raise InputError(f"{name}: value out of range [{low}, {high}] for dtype {row.name}")
    return arr.astype(row.numpy or "float32", copy=False)


def _all_numbers(value: Any) -> bool:
    """True for a (nested) list of ints/floats (None allowed; it becomes NaN and is refused)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, bool) or not (v is None or isinstance(v, (int, float))):
            return False
    return True


def refuse_booleans(params: list[Param], data: dict[str, Any]) -> None:
    """Raise `InputError` if a numeric tensor field holds a JSON `true`/`false`.

    numpy reads `[true, 1.5]` as `[1.0, 1.5]`; for a parameter whose spec declares a numeric
    dtype that hides a client bug. The walk is in Python, so callers run it only when the body
    holds a boolean literal at all (a fast bytes search).
    """
    for p in params:
        numeric = p.spec is not None and p.spec.dtype not in (None, "bool")
        if not numeric or (p.kind != "tensor" and p.item_kind != "tensor") or p.name not in data:
            continue
        stack = [data[p.name]]
        while stack:
            v = stack.pop()
            if isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, bool):
                raise InputError(
                    f"{p.name}: expected numbers for dtype {p.spec.dtype}, got a boolean"  # type: ignore[union-attr]
                )


def _decode_image(name: str, value: Any) -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise InputError(f"{name}: image inputs need Pillow installed on the server", 415) from None
    if isinstance(value, str):
        data = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            raise InputError(f"{name}: expected a base64-encoded image") from None
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise InputError(f"{name}: expected an image (upload it as the body, or base64 in JSON)")
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except Exception as exc:
        raise InputError(f"{name}: not a readable image ({exc})", 400) from None
    return img


_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "dict": (dict,),
}  # fmt: skip


def _decode_value(name: str, kind: str, value: Any, spec: TensorSpec | None) -> Any:
    if kind == "tensor":
        if (
            hasattr(value, "dtype")
            and hasattr(value, "shape")
            and not isinstance(value, np.ndarray)
        ):
            if spec is not None:
                spec.check(name, value)
            return value
        return _tensor_from_list(name, value, spec)
    if kind == "image":
        return _decode_image(name, value)
    if kind in _SCALARS:
        ok = _SCALARS[kind]
        if not isinstance(value, ok) or (kind in ("int", "float") and isinstance(value, bool)):
            raise InputError(f"{name}: expected {kind}, got {type(value).__name__}")
        return float(value) if kind == "float" else value  # type: ignore[arg-type]
    if kind == "list" and not isinstance(value, list):
        raise InputError(f"{name}: expected a list, got {type(value).__name__}")
    return value


def decode_param(param: Param, body: dict[str, Any], batch: bool = False) -> Any:
    """Decode `body[param.name]` by the parameter's kind; missing required fields are 422.

    For a batch api a list-typed parameter decodes each item by the item kind.
    """
    if param.name not in body:
        if param.required:
            raise InputError(f"missing field {param.name!r}")
        return param.default
    value = body[param.name]
    if param.kind == "list" and param.item_kind:
        if not isinstance(value, list):
            raise InputError(f"{param.name}: expected a list, got {type(value).__name__}")
        return [
            _decode_value(f"{param.name}[{i}]", param.item_kind, v, param.spec)
            for i, v in enumerate(value)
        ]
    return _decode_value(param.name, param.kind, value, param.spec)


def decode_safetensors(body: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """A safetensors body -> (tensors by name, metadata strings); malformed bodies are 400."""
    from safetensors.torch import load

    if not body:
        raise InputError("the request body is empty: send a safetensors file", 400)
    try:
        tensors = load(bytes(body))
    except Exception as exc:
        raise InputError(f"malformed safetensors body: {exc}", 400) from None
    meta: dict[str, str] = {}
    n = int.from_bytes(body[:8], "little")
    if b"__metadata__" in body[8 : 8 + n]:
        with contextlib.suppress(InputError, TypeError, AttributeError):
            meta = dict(decode_json(body[8 : 8 + n]).get("__metadata__") or {})
    return tensors, meta


# -- encoding -----------------------------------------------------------------------------------


def _to_numpy(obj: Any) -> Any:
    """orjson's `default`: tensors -> numpy arrays it can serialise natively."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype in (torch.bfloat16,):
            t = t.float()
        return np.ascontiguousarray(t.numpy())
    if isinstance(obj, np.ndarray):
        return np.ascontiguousarray(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


if orjson is not None:
    _OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def encode_json(obj: Any) -> bytes:
        """Encode a result (dicts, lists, scalars, tensors as nested lists) as JSON bytes."""
        return orjson.dumps(obj, default=_to_numpy, option=_OPTS)

else:  # pragma: no cover

    def encode_json(obj: Any) -> bytes:
        """Encode a result (dicts, lists, scalars, tensors as nested lists) as JSON bytes."""

        def default(o: Any) -> Any:
            v = _to_numpy(o)
            return v.tolist() if isinstance(v, np.ndarray) else v

        return json.dumps(obj, default=default).encode()


def encode_safetensors(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """Encode tensors (moved to CPU, made contiguous) as a safetensors body.

    Written directly (8-byte header length, JSON header, raw little-endian data): for the small
    tensors of one request, `safetensors.torch.save` spends ~100 us on checks for shared storage
    that a response cannot have.
    """
    import sys

    import torch

    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        row = dtypes.of(t.dtype)
        code = row.safetensors if row is not None else None
        # The direct path covers what numpy can view (bfloat16 as int16); the rest via the library.
        if (
            row is None
            or code is None
            or row.kind == "complex"
            or (not row.numpy and code != "BF16")
        ):
            from safetensors.torch import save

            return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
        raw = t.view(torch.int16) if code == "BF16" else t
        blob = raw.numpy().tobytes()
        if sys.byteorder != "little" and raw.element_size() > 1:  # pragma: no cover
            blob = raw.numpy().byteswap().tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = metadata
    head = encode_json(header)
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)
