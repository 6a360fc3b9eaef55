"""Open Inference Protocol bodies (core/serving/v2_codec.py) without a server.

Byte formats are checked against the real `tritonclient.http` code: requests it builds are
parsed here, and responses written here are read back with its `InferResult`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from torchshelf import dtypes
from torchshelf.serving.codecs import InputError, Param, TensorSpec
from torchshelf.serving.v2_codec import (
    BYTES,
    InferRequest,
    RequestedOutput,
    bind_inputs,
    encode_infer_response,
    model_metadata,
    output_metadata,
    outputs_of,
    parse_infer_request,
    server_metadata,
    tensor_metadata,
)

V2_TYPES = [d for d in dtypes.DTYPES if d.v2]


def _body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _sample(row: dtypes.DType) -> torch.Tensor:
    if row.kind == "bool":
        return torch.tensor([[True, False, True], [False, False, True]])
    if row.kind == "float":
        return torch.tensor([[0.5, -1.25, 3.0], [65504.0 if row.itemsize == 2 else 1e30, 0, 2]])
    low, high = row.value_range or (0, 0)
    return torch.tensor([[low, high, 0], [1, low // 2, high // 3]], dtype=row.torch)


def _status(exc: pytest.ExceptionInfo[InputError]) -> int:
    return exc.value.status


@pytest.mark.parametrize("row", V2_TYPES, ids=lambda r: r.v2)
@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_json_tensors_every_datatype(row: dtypes.DType, layout: str) -> None:
    want = _sample(row).to(row.torch)
    values = want.float().tolist() if row.name == "bfloat16" else want.tolist()
    data = values if layout == "nested" else [v for r in values for v in r]
    req = parse_infer_request(
        _body({"name": "x", "shape": [2, 3], "datatype": row.v2, "data": data})
    )
    got = req.inputs["x"].value
    assert got.dtype == row.torch and got.shape == (2, 3)
    assert torch.equal(got, want)


@pytest.mark.parametrize("row", V2_TYPES, ids=lambda r: r.v2)
def test_binary_tensors_every_datatype_roundtrip_with_tritonclient(row: dtypes.DType) -> None:
    want = _sample(row).to(row.torch)
    np_dtype = ml_dtypes.bfloat16 if row.name == "bfloat16" else row.numpy
    arr = (
        np.array(want.float().numpy(), dtype=ml_dtypes.bfloat16)
        if row.name == "bfloat16"
        else want.numpy()
    )
    inp = triton.InferInput("x", [2, 3], row.v2)
    inp.set_data_from_numpy(arr.astype(np_dtype), binary_data=True)
    body, json_size = _get_inference_request([inp], "7", None, 0, False, False, 0, None, None)
    req = parse_infer_request(body, str(json_size))
    assert req.id == "7" and req.binary_output  # no outputs named: tritonclient asks binary
    got = req.inputs["x"].value
    assert got.dtype == row.torch and torch.equal(got, want)
    # and back: the response read by tritonclient's own parser
    out, header = encode_infer_response("m", "v1", req, outputs_of({"y": got}))
    result = triton.InferResult.from_response_body(out, header_length=header)
    back = result.as_numpy("y")
    assert back.dtype == np.dtype(np_dtype) and back.shape == (2, 3)
    assert np.array_equal(back.astype(np.float64), arr.astype(np.float64))
    assert result.get_response()["model_version"] == "v1"


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "INT64", "BOOL"])
def test_json_response_read_by_tritonclient(datatype: str) -> None:
    row = dtypes.by_v2(datatype)
    assert row is not None
    tensor = _sample(row).to(row.torch)
    req = InferRequest(id=None, inputs={}, outputs=(RequestedOutput("outputs", binary=False),))
    body, header = encode_infer_response("m", None, req, outputs_of(tensor))
    assert header is None
    doc = json.loads(body)
    assert "model_version" not in doc and "id" not in doc
    flat = np.array(doc["outputs"][0]["data"], dtype=tensor.numpy().dtype)
    assert np.array_equal(flat, tensor.numpy().reshape(-1))  # flat, exact in the datatype
    back = triton.InferResult.from_response_body(body).as_numpy("outputs")
    assert np.array_equal(back, tensor.numpy())


def test_bytes_json_and_binary() -> None:
    words = np.array([["héllo", ""], ["a\x00b", "z"]], dtype=np.object_)
    inp = triton.InferInput("s", [2, 2], "BYTES")
    inp.set_data_from_numpy(words, binary_data=True)
    body, size = _get_inference_request([inp], "", None, 0, False, False, 0, None, None)
    binary = parse_infer_request(body, str(size)).inputs["s"].value
    assert binary == [w.encode() for w in words.reshape(-1)]
    inp.set_data_from_numpy(words, binary_data=False)
    body, size = _get_inference_request([inp], "", None, 0, False, False, 0, None, None)
    assert size is None
    assert parse_infer_request(body).inputs["s"].value == binary
    # outputs: str -> BYTES both ways
    for binary_out in (True, False):
        req = InferRequest(id="1", inputs={}, binary_output=binary_out)
        out, header = encode_infer_response("m", "1", req, outputs_of(["héllo", "x"]))
        back = triton.InferResult.from_response_body(out, header_length=header).as_numpy("outputs")
        assert [v if isinstance(v, str) else v.decode() for v in back.tolist()] == ["héllo", "x"]


def test_binary_and_json_inputs_mixed_in_order() -> None:
    a = triton.InferInput("a", [2], "FP32")
    a.set_data_from_numpy(np.array([1.5, 2.5], dtype=np.float32), binary_data=True)
    b = triton.InferInput("b", [1], "INT32")
    b.set_data_from_numpy(np.array([7], dtype=np.int32), binary_data=False)
    c = triton.InferInput("c", [3], "UINT8")
    c.set_data_from_numpy(np.array([1, 2, 3], dtype=np.uint8), binary_data=True)
    body, size = _get_inference_request([a, b, c], "", None, 0, False, False, 0, None, None)
    req = parse_infer_request(body, str(size))
    assert req.inputs["a"].value.tolist() == [1.5, 2.5]
    assert req.inputs["b"].value.tolist() == [7]
    assert req.inputs["c"].value.tolist() == [1, 2, 3]


def test_empty_tensors() -> None:
    req = parse_infer_request(_body({"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}))
    assert req.inputs["x"].value.shape == (0, 4)
    head = _body(
        {"name": "x", "shape": [0], "datatype": "FP16", "parameters": {"binary_data_size": 0}}
    )
    assert parse_infer_request(head, str(len(head))).inputs["x"].value.shape == (0,)


def test_exact_64_bit_integers() -> None:
    data = [1, 2**63 + 5, 2**64 - 1]
    got = parse_infer_request(
        _body({"name": "x", "shape": [3], "datatype": "UINT64", "data": data})
    )
    assert got.inputs["x"].value.tolist() == data
    # orjson reads integers past 64 bits as floats, so 2**64 is "not an integer" for UINT64
    cases = [
        ("UINT64", 2**64),
        ("INT64", 2**63),
        ("INT64", -(2**63) - 1),
        ("INT8", 128),
        ("UINT8", -1),
    ]
    for datatype, value in cases:
        with pytest.raises(InputError, match="out of range|expected integers") as exc:
            parse_infer_request(
                _body({"name": "x", "shape": [2], "datatype": datatype, "data": [1, value]})
            )
        assert _status(exc) == 400


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        ({"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}, "unknown datatype 'FP99'"),
        ({"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}, "needs 3"),
        ({"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}, "expected integers"),
        ({"name": "x", "shape": [2], "datatype": "INT32", "data": [True, 2]}, "got a boolean"),
        ({"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}, "true/false"),
        ({"name": "x", "shape": [1], "datatype": "FP16", "data": [70000]}, "out of range for FP16"),
        ({"name": "x", "shape": [1], "datatype": "BF16", "data": [3.5e38]}, "out of range for BF16"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [1, None]}, "null"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": ["1", 2]}, "expected numbers"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}, "rectangular"),
        ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "non-negative"),
        ({"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}, "must be strings"),
        ({"name": "x", "shape": [1], "datatype": "FP32"}, "give 'data'"),
        ({"shape": [1], "datatype": "FP32", "data": [1]}, "needs a 'name'"),
        (
            {"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
             "parameters": {"shared_memory_region": "r"}},
            "shared-memory",
        ),
    ],
)  # fmt: skip
def test_bad_tensors_are_400_naming_the_input(tensor: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match) as exc:
        parse_infer_request(_body(tensor))
    assert _status(exc) == 400
    if "name" in tensor:
        assert "'x'" in str(exc.value)


def test_bad_bodies() -> None:
    cases: list[tuple[bytes, str | None, str]] = [
        (b"{", None, "malformed JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "id": 3}', None, "'id'"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
               {"name": "x", "shape": [1], "datatype": "FP32", "data": [2]}), None, "twice"),
        (b'{"inputs": 1}', "x", "not a number"),
        (b'{"inputs": 1}', "99", "only 13 bytes"),
    ]  # fmt: skip
    head = _body(
        {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    )
    cases += [
        (head + b"\0" * 4, str(len(head)), "only 4 bytes"),
        (head + b"\0" * 12, str(len(head)), "add up to 8"),
        (head + b"\0" * 8, None, "malformed JSON"),
    ]
    head = _body(
        {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
    )
    cases.append((head + b"\0" * 4, str(len(head)), "needs 8"))
    head = _body(
        {"name": "x", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}
    )
    cases.append((head + b"\x01\x02", str(len(head)), "0 or 1"))
    head = _body(
        {"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}
    )
    cases.append((head + struct.pack("<I", 5) + b"ab", str(len(head)), "runs past"))
    for body, header, match in cases:
        with pytest.raises(InputError, match=match) as exc:
            parse_infer_request(body, header)
        assert _status(exc) == 400


def test_requested_outputs_and_binary_choice() -> None:
    body = _body(
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
        outputs=[{"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}],
        parameters={"binary_data_output": False},
        id="req-1",
    )
    req = parse_infer_request(body)
    result = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3], dtype=torch.int64), "c": "x"}
    out, header = encode_infer_response("m", "3", req, outputs_of(result))
    assert header is not None
    doc = json.loads(out[:header])
    assert [o["name"] for o in doc["outputs"]] == ["b", "a"]  # requested order, c left out
    assert doc["id"] == "req-1" and doc["model_name"] == "m" and doc["model_version"] == "3"
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert doc["outputs"][1]["data"] == [1.0, 2.0]
    assert out[header:] == struct.pack("<q", 3)
    req = parse_infer_request(
        _body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, outputs=[{"name": "z"}])
    )
    with pytest.raises(InputError, match="unknown output 'z'.*a, b, c"):
        encode_infer_response("m", None, req, outputs_of(result))


def test_bind_inputs_checks_the_spec_and_names_the_input() -> None:
    spec = TensorSpec((-1, 4), "float32")
    params = [Param("inputs", "tensor", spec=spec)]
    ok = parse_infer_request(
        _body({"name": "inputs", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 8})
    )
    assert bind_inputs(ok, params, batch=True)["inputs"].shape == (2, 4)
    bad = [
        ({"name": "inputs", "shape": [2, 3], "datatype": "FP32", "data": [0.0] * 6}, "shape"),
        (
            {"name": "inputs", "shape": [2, 4], "datatype": "FP64", "data": [0.0] * 8},
            "datatype FP32",
        ),
        ({"name": "inputs", "shape": [8], "datatype": "FP32", "data": [0.0] * 8}, "shape"),
        ({"name": "inputs", "shape": [1], "datatype": "BYTES", "data": ["a"]}, "numeric"),
        (
            {"name": "other", "shape": [1], "datatype": "FP32", "data": [0.0]},
            "unknown input 'other'",
        ),
    ]
    for tensor, match in bad:
        with pytest.raises(InputError, match=match) as exc:
            bind_inputs(parse_infer_request(_body(tensor)), params, batch=True)
        assert _status(exc) == 400 and ("'inputs'" in str(exc.value) or "'other'" in str(exc.value))


def test_bind_inputs_by_parameter_kind() -> None:
    params = [
        Param("name", "str"),
        Param("times", "int", required=False, default=1),
        Param("scale", "float"),
        Param("loud", "bool"),
        Param("options", "dict"),
        Param("items", "list", item_kind="tensor", spec=TensorSpec((3,), "float32")),
        Param("tags", "list", item_kind="str"),
    ]
    body = _body(
        {"name": "name", "shape": [1], "datatype": "BYTES", "data": ["ada"]},
        {"name": "scale", "shape": [1], "datatype": "INT32", "data": [2]},
        {"name": "loud", "shape": [], "datatype": "BOOL", "data": True},
        {"name": "options", "shape": [1], "datatype": "BYTES", "data": ['{"k": [1, 2]}']},
        {"name": "items", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
        {"name": "tags", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
    )
    kwargs = bind_inputs(parse_infer_request(body), params, batch=False)
    assert kwargs["name"] == "ada" and kwargs["times"] == 1
    assert kwargs["scale"] == 2.0 and isinstance(kwargs["scale"], float)
    assert kwargs["loud"] is True and kwargs["options"] == {"k": [1, 2]}
    assert [t.tolist() for t in kwargs["items"]] == [[1, 2, 3], [4, 5, 6]]
    assert kwargs["tags"] == ["x", "y"]
    wrong = [
        ({"name": "name", "shape": [1], "datatype": "INT32", "data": [1]}, "BYTES"),
        ({"name": "name", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}, "one element"),
        ({"name": "loud", "shape": [1], "datatype": "INT8", "data": [1]}, "cannot be INT8"),
        ({"name": "items", "shape": [2, 4], "datatype": "FP32", "data": [0] * 8}, r"\[-1, 3\]"),
    ]
    by_name = {p.name: p for p in params}
    for tensor, match in wrong:
        with pytest.raises(InputError, match=match):
            bind_inputs(parse_infer_request(_body(tensor)), [by_name[tensor["name"]]], False)
    no_scale = _body({"name": "name", "shape": [1], "datatype": "BYTES", "data": ["ada"]})
    with pytest.raises(InputError, match="missing input 'scale'"):
        bind_inputs(parse_infer_request(no_scale), params[:3], False)


def test_outputs_of_shapes() -> None:
    assert [o.name for o in outputs_of(torch.zeros(2))] == ["outputs"]
    multi = outputs_of((torch.zeros(2), torch.ones(3, dtype=torch.int32)))
    assert [(o.name, o.datatype, o.shape) for o in multi] == [
        ("outputs_0", "FP32", (2,)),
        ("outputs_1", "INT32", (3,)),
    ]
    rows = outputs_of(
        [{"label": 1, "scores": torch.zeros(3)}, {"label": 2, "scores": torch.ones(3)}]
    )
    assert [(o.name, o.datatype, o.shape) for o in rows] == [
        ("label", "INT64", (2,)),
        ("scores", "FP32", (2, 3)),
    ]
    greeting = outputs_of(
        {"greeting": "hi", "times": 2, "ratio": 0.5, "ok": True, "nested": {"a": 1}}
    )
    assert [(o.name, o.datatype) for o in greeting] == [
        ("greeting", BYTES), ("times", "INT64"), ("ratio", "FP64"),
        ("ok", "BOOL"), ("nested", BYTES),
    ]  # fmt: skip
    assert greeting[4].value == [b'{"a":1}']
    assert outputs_of(torch.zeros(2, dtype=torch.float8_e4m3fn))[0].datatype == "FP32"
    with pytest.raises(InputError, match="no datatype") as exc:
        outputs_of(torch.zeros(2, dtype=torch.complex64))
    assert _status(exc) == 500
    assert outputs_of(None) == []


def test_metadata_documents() -> None:
    assert server_metadata("1.2")["extensions"] == ["binary_tensor_data", "model_repository"]
    params = [
        Param("x", "tensor", spec=TensorSpec((-1, 8), "float16")),
        Param("items", "list", item_kind="tensor", spec=TensorSpec((3,), "int64")),
        Param("name", "str"),
        Param("tags", "list", item_kind="str"),
        Param("free", "tensor"),
    ]
    assert [tensor_metadata(p) for p in params] == [
        {"name": "x", "datatype": "FP16", "shape": [-1, 8]},
        {"name": "items", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "name", "datatype": "BYTES", "shape": [1]},
        {"name": "tags", "datatype": "BYTES", "shape": [-1]},
        {"name": "free", "datatype": "FP32", "shape": [-1]},
    ]
    outs = output_metadata(outputs_of(torch.zeros(4, 3)), batch=True)
    assert outs == [{"name": "outputs", "datatype": "FP32", "shape": [-1, 3]}]
    doc = model_metadata("m", ["3"], "pytorch_torchscript", params[:1], outs)
    assert doc["versions"] == ["3"] and doc["inputs"][0]["shape"] == [-1, 8]
    assert math.prod(doc["outputs"][0]["shape"][1:]) == 3
