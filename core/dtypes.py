"""The one dtype table of torchshelf: every torch dtype the store, the codecs, the OpenAPI
document, the Open Inference Protocol (V2) handler and `shelf bench` know, with its names in each
of those worlds.

One row per torch dtype: the torch attribute name and its aliases (`half`, `fp16`, ...), the
safetensors code (`F16`), the numpy name (None where numpy has none: bfloat16, float8), the V2
datatype (`FP16`; None where the protocol has none) and, for JSON, the range of values that fit.
Importing this module imports neither torch nor numpy (`shelf list` and `--help` stay light).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "V2_BYTES",
    "DType",
    "by_safetensors",
    "by_v2",
    "find",
    "lookup",
    "of",
    "spec_names",
]

V2_BYTES = "BYTES"
"""The V2 datatype of `str` parameters and outputs (no torch dtype has it)."""


@dataclass(frozen=True)
class DType:
    """One torch dtype and its names elsewhere.

    `kind` is one of `float`, `int`, `uint`, `bool`, `complex`; `itemsize` is bytes per element.
    For integers `value_range` is the inclusive (min, max); for floats `overflow` is where a
    JSON number rounds to infinity (largest finite value plus half its spacing, exact in float64;
    None for float64, whose overflow JSON parsers already refuse). The bound is for a JSON
    number decoded by the codecs (float64, then the dtype).
    """

    name: str
    aliases: tuple[str, ...]
    kind: str
    itemsize: int
    safetensors: str | None
    numpy: str | None
    v2: str | None
    value_range: tuple[int, int] | None = None
    overflow: float | None = None
    _torch: list[Any] = field(default_factory=list, repr=False, compare=False, hash=False)

    @property
    def torch(self) -> torch.dtype:
        """The `torch.dtype` (imports torch on first use; cached, this is on the request path)."""
        if not self._torch:
            import torch

            self._torch.append(getattr(torch, self.name))
        return self._torch[0]  # type: ignore[no-any-return]

    @property
    def names(self) -> tuple[str, ...]:
        """The torch name first, then every alias."""
        return (self.name, *self.aliases)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    def json_schema(self) -> dict[str, Any]:
        """The JSON-schema fragment for one element: type and the range that fits."""
        if self.kind == "bool":
            return {"type": "boolean"}
        if self.value_range is not None:
            low, high = self.value_range
            return {"type": "integer", "minimum": low, "maximum": high}
        if self.overflow is not None:
            return {
                "type": "number",
                "exclusiveMinimum": -self.overflow,
                "exclusiveMaximum": self.overflow,
            }
        return {"type": "number"}


def _int(name: str, bits: int, signed: bool, st: str, aliases: tuple[str, ...] = ()) -> DType:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    v2 = ("INT" if signed else "UINT") + str(bits)
    kind = "int" if signed else "uint"
    return DType(name, aliases, kind, bits // 8, st, name, v2, value_range=(low, high))


DTYPES: tuple[DType, ...] = (
    DType("float32", ("float", "fp32"), "float", 4, "F32", "float32", "FP32",
          overflow=2.0**128 - 2.0**103),
    DType("float64", ("double", "fp64"), "float", 8, "F64", "float64", "FP64"),
    DType("float16", ("half", "fp16"), "float", 2, "F16", "float16", "FP16", overflow=65520.0),
    # bfloat16 and float8 are reached through float32 (torch rounds twice), so where the tie of
    # float32 lies below the dtype's own bound, that is the bound.
    DType("bfloat16", ("bf16",), "float", 2, "BF16", None, "BF16",
          overflow=2.0**128 - 2.0**119 - 2.0**103),
    DType("float8_e4m3fn", (), "float", 1, "F8_E4M3", None, None, overflow=464.0),
    DType("float8_e5m2", (), "float", 1, "F8_E5M2", None, None, overflow=61440.0 - 2.0**-9),
    _int("int64", 64, True, "I64", ("long",)),
    _int("int32", 32, True, "I32", ("int",)),
    _int("int16", 16, True, "I16", ("short",)),
    _int("int8", 8, True, "I8"),
    _int("uint8", 8, False, "U8"),
    _int("uint16", 16, False, "U16"),
    _int("uint32", 32, False, "U32"),
    _int("uint64", 64, False, "U64"),
    DType("bool", (), "bool", 1, "BOOL", "bool", "BOOL"),
    DType("complex64", ("cfloat",), "complex", 8, "C64", "complex64", None),
    DType("complex128", ("cdouble",), "complex", 16, None, "complex128", None),
)  # fmt: skip

_BY_NAME: dict[str, DType] = {n: d for d in DTYPES for n in d.names}
_BY_ST: dict[str, DType] = {d.safetensors: d for d in DTYPES if d.safetensors}
_BY_V2: dict[str, DType] = {d.v2: d for d in DTYPES if d.v2}


def find(name: Any) -> DType | None:
    """The row for a torch name or alias (`float32`, `half`, `torch.int64`, a `torch.dtype`)."""
    if isinstance(name, str):
        found = _BY_NAME.get(name)  # the request path: an exact name, one dict lookup
        if found is not None:
            return found
    elif name is None:
        return None
    return _BY_NAME.get(str(name).strip().lower().removeprefix("torch."))


def lookup(name: Any) -> DType:
    """Like `find`, but an unknown name is a `KeyError` that lists the known ones."""
    found = find(name)
    if found is None:
        raise KeyError(f"unknown dtype {name!r}; use one of {', '.join(spec_names())}")
    return found


def of(dtype: Any) -> DType | None:
    """The row for a `torch.dtype` (or a tensor's `.dtype`); None for dtypes not in the table."""
    return _BY_NAME.get(str(dtype).removeprefix("torch."))


def by_safetensors(code: str) -> DType | None:
    """The row for a safetensors dtype code (`F32`, `BF16`, ...)."""
    return _BY_ST.get(code)


def by_v2(datatype: str) -> DType | None:
    """The row for an Open Inference Protocol datatype (`FP32`, `UINT8`, ...; not `BYTES`)."""
    return _BY_V2.get(datatype)


def spec_names() -> list[str]:
    """The torch names accepted in an input spec, in table order."""
    return [d.name for d in DTYPES]
