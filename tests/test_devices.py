"""Device strings are parsed without torch and checked against the devices this machine has."""

from __future__ import annotations

import pytest
import torch

import torchshelf
from torchshelf.devices import available_devices, parse_device, resolve_device


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, "cpu"),
        ("cpu", "cpu"),
        ("CPU", "cpu"),
        ("cuda", "cuda"),
        ("cuda:1", "cuda:1"),
        ("mps", "mps"),
    ],
)
def test_device_strings_are_normalised(spec: str | None, expected: str) -> None:
    assert parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "cpu:1", "tpu:0", ""])
def test_malformed_device_strings_are_refused(spec: str) -> None:
    with pytest.raises(torchshelf.DeviceError, match="invalid device"):
        parse_device(spec)


@pytest.mark.skipif(torch.cuda.device_count() > 3, reason="this machine has a cuda:3")
def test_a_missing_cuda_device_names_the_devices_that_exist() -> None:
    with pytest.raises(torchshelf.DeviceError) as info:
        resolve_device("cuda:3")
    assert "cuda:3" in str(info.value)
    for device in available_devices():
        assert device in str(info.value)


def test_load_model_refuses_a_missing_device_before_loading(tmp_path) -> None:
    tag = torchshelf.save_model("lin", torch.nn.Linear(2, 2), store=tmp_path)
    if torch.cuda.device_count() <= 7:
        with pytest.raises(torchshelf.DeviceError, match="cuda:7"):
            torchshelf.load_model(tag, device_id="cuda:7", store=tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_model_puts_weights_on_the_gpu(tmp_path) -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    ).eval()
    tag = torchshelf.save_model("gpu", model, store=tmp_path)
    loaded = torchshelf.load_model(tag, device_id="cuda:0", store=tmp_path)
    assert all(p.device.type == "cuda" for p in loaded.parameters())
    x = torch.randn(4, 8)
    torch.testing.assert_close(loaded(x.cuda()).cpu(), model(x))
