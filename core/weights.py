"""Tensors <-> safetensors files: written while hashed, read back through safetensors' mmap.

Writing goes through `HashingWriter` rather than `safetensors.torch.save_file`, because the
library gives no way to hash the bytes as they are written, and a second read pass over a 1 GiB
file would add ~0.6 s to every save. The layout is the documented safetensors format (8-byte
little-endian header length, JSON header, tensors back to back, aligned to their item size), and
every file is read with the `safetensors` library itself, which validates it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import dtypes
from .errors import FormatError
from .manifest import FileRecord, HashingWriter, Progress

if TYPE_CHECKING:
    import torch


def _dtype_code(tensor: torch.Tensor) -> str:
    row = dtypes.of(tensor.dtype)
    if row is None or row.safetensors is None:
        raise FormatError(f"cannot store tensors of dtype {tensor.dtype} in safetensors")
    return row.safetensors


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (copies only when it must)."""
    import torch

    t = tensor.detach()
    if t.device.type == "meta":
        raise FormatError("cannot store a tensor on the meta device: it holds no data")
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]


def write_safetensors(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> FileRecord:
    """Write `tensors` as a safetensors file, hashing while writing; return its file record."""
    # Largest item size first keeps every tensor aligned (as safetensors itself orders them).
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    views: list[memoryview] = []
    for key in order:
        t = tensors[key]
        view = tensor_bytes(t)
        header[key] = {
            "dtype": _dtype_code(t),
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(view)],
        }
        offset += len(view)
        views.append(view)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(len(head) + 8) % 8)
    writer = HashingWriter(path, progress)
    try:
        writer.write(struct.pack("<Q", len(head)) + head)
        for view in views:
            if len(view):
                writer.write(view)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a file, mmap-backed on CPU, or loaded straight onto `device`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as fh:
        return {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - not a dict


def read_safetensors_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Tensors from in-memory bytes (used for small files already hashed in memory)."""
    from safetensors.torch import load

    return load(data)
