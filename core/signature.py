"""Model signatures: which methods of a stored model are called, and how calls batch.

A signature is stored in the manifest as plain JSON, `{"batchable": bool, "batch_dim": int or
[in, out], "input_spec": ..., ...}`. Reading it back gives a `Signature`: the same dict (so
`sig["batchable"]` and `json.dumps` work) with BentoML's `ModelSignature` attributes on top
(`sig.batchable`, `sig.batch_dim` as an `(in, out)` tuple), so code written for either reads it.
"""

from __future__ import annotations

from typing import Any

from .errors import UsageError


def batch_dims(value: object, method: str = "?") -> tuple[int, int]:
    """`0` -> `(0, 0)`, `(1, 0)` or `[1, 0]` -> `(1, 0)`; anything else is a `UsageError`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) for d in value)
    ):
        return int(value[0]), int(value[1])
    raise UsageError(
        f"signature {method!r}: batch_dim must be an integer or an (input, output) pair of "
        f"integers, not {value!r}"
    )


def stored_batch_dim(value: object, method: str = "?") -> int | list[int]:
    """The JSON form of a batch_dim: an int when input and output agree, else `[in, out]`."""
    dim_in, dim_out = batch_dims(value, method)
    return dim_in if dim_in == dim_out else [dim_in, dim_out]


class Signature(dict[str, Any]):
    """One stored signature: a dict of its JSON, plus BentoML's `ModelSignature` attributes."""

    @property
    def batchable(self) -> bool:
        """Whether concurrent calls of this method may be merged into one batch."""
        return bool(self.get("batchable", False))

    @property
    def batch_dim(self) -> tuple[int, int]:
        """`(input, output)` batch dimensions, as BentoML reports them."""
        return batch_dims(self.get("batch_dim", 0))

    @property
    def input_batch_dim(self) -> int:
        """The dimension along which inputs of several calls are concatenated."""
        return self.batch_dim[0]

    @property
    def output_batch_dim(self) -> int:
        """The dimension along which the output is split back between the calls."""
        return self.batch_dim[1]

    @property
    def input_spec(self) -> Any:
        """Shape and dtype of the input (`{"shape": [...], "dtype": ...}`), or None."""
        return self.get("input_spec")

    @property
    def output_spec(self) -> Any:
        """Whatever was saved as `output_spec` (kept, not interpreted), or None."""
        return self.get("output_spec")

    def __repr__(self) -> str:
        return f"Signature({dict.__repr__(self)})"
