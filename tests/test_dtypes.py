"""The one dtype table: every row agrees with torch, numpy and safetensors themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from torchshelf import dtypes
from torchshelf.serving.codecs import (
    InputError,
    Param,
    TensorSpec,
    decode_param,
    decode_safetensors,
    encode_safetensors,
)


@pytest.mark.parametrize("row", dtypes.DTYPES, ids=lambda r: r.name)
def test_each_row_matches_torch_numpy_and_safetensors(row: dtypes.DType) -> None:
    t = torch.zeros(3, dtype=row.torch)
    assert t.element_size() == row.itemsize
    assert dtypes.of(t.dtype) is row
    for alias in row.names:
        assert dtypes.lookup(alias) is row
        assert dtypes.lookup(f"torch.{alias}") is row
    if row.numpy is not None:
        assert torch.from_numpy(np.zeros(3, dtype=row.numpy)).dtype is row.torch
    if row.safetensors is not None:
        header_len = int.from_bytes(save({"t": t})[:8], "little")
        assert f'"dtype":"{row.safetensors}"' in save({"t": t})[8 : 8 + header_len].decode()
        assert dtypes.by_safetensors(row.safetensors) is row
    if row.v2 is not None:
        assert dtypes.by_v2(row.v2) is row


def test_v2_covers_the_protocol_datatypes_torch_has() -> None:
    wanted = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    wanted |= {"FP16", "FP32", "FP64", "BF16"}
    assert {r.v2 for r in dtypes.DTYPES if r.v2} == wanted
    assert dtypes.by_v2(dtypes.V2_BYTES) is None  # BYTES is str, no torch dtype


@pytest.mark.parametrize("row", [r for r in dtypes.DTYPES if r.is_float and r.overflow])
def test_json_numbers_past_the_overflow_bound_are_refused_and_below_it_decode(
    row: dtypes.DType,
) -> None:
    p = Param("x", "tensor", spec=TensorSpec((-1,), row.name))
    below = row.overflow * (1 - 2**-40)
    got = decode_param(p, {"x": [below, -below]})
    assert got.dtype is row.torch and torch.isfinite(got.float()).all()
    for bad in (row.overflow, -row.overflow, row.overflow * 2):
        with pytest.raises(InputError, match="out-of-range"):
            decode_param(p, {"x": [1.0, bad]})


def test_json_schema_ranges_are_the_integer_limits() -> None:
    for row in dtypes.DTYPES:
        if row.value_range is None:
            continue
        info = torch.iinfo(row.torch)
        assert row.value_range == (info.min, info.max)
        assert row.json_schema() == {"type": "integer", "minimum": info.min, "maximum": info.max}
    assert dtypes.lookup("bool").json_schema() == {"type": "boolean"}


def test_unknown_names_are_refused_with_the_known_ones_listed() -> None:
    assert dtypes.find("float33") is None
    with pytest.raises(KeyError, match="float32"):
        dtypes.lookup("float33")


@pytest.mark.parametrize("name", ["uint16", "bf16", "half", "int8"])
def test_json_tensors_decode_to_every_spec_dtype(name: str) -> None:
    row = dtypes.lookup(name)
    p = Param("x", "tensor", spec=TensorSpec((-1, 2), name))
    got = decode_param(p, {"x": [[1, 2], [3, 4]]})
    assert got.dtype is row.torch
    assert got.tolist() == [[1, 2], [3, 4]]


def test_an_integer_out_of_the_dtype_range_is_refused_not_wrapped() -> None:
    p = Param("x", "tensor", spec=TensorSpec((-1,), "int8"))
    with pytest.raises(InputError, match=r"out of range \[-128, 127\]"):
        decode_param(p, {"x": [1, 300]})
    with pytest.raises(InputError, match="out-of-range"):
        decode_param(Param("y", "tensor", spec=TensorSpec((-1,), "float16")), {"y": [1e6]})


@pytest.mark.parametrize("name", ["float32", "bfloat16", "uint16", "bool", "int64"])
def test_safetensors_responses_round_trip_through_the_library(name: str) -> None:
    t = torch.arange(6).reshape(2, 3).to(dtypes.lookup(name).torch)
    body = encode_safetensors({"out": t}, {"k": "v"})
    assert torch.equal(load(body)["out"], t)
    tensors, meta = decode_safetensors(body)
    assert torch.equal(tensors["out"], t) and meta == {"k": "v"}
