"""`--device` lists (`cuda:0,cuda:1`, `cpu,cpu`, `all`): parsed without torch, checked with it.

No GPU here: `all` is checked through `expand_all` with the CUDA count given, and on this
machine (no CUDA) it must mean the CPU.
"""

from __future__ import annotations

import pytest
import torch

import torchshelf
from torchshelf.devices import expand_all, parse_devices, resolve_devices, split_threads


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ["cpu"]),
        ("cpu", ["cpu"]),
        ("cpu,cpu", ["cpu", "cpu"]),
        ("cuda:0, cuda:1", ["cuda:0", "cuda:1"]),
        ("CUDA:1,cpu", ["cuda:1", "cpu"]),
        ("cuda:0,cuda:0", ["cuda:0", "cuda:0"]),  # two replicas on one device
        ("all", ["all"]),
        (" ALL ", ["all"]),
    ],
)
def test_device_lists_parse_to_one_entry_per_replica(spec: str | None, expected: list[str]) -> None:
    assert parse_devices(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "an entry is empty"),
        ("cuda:0,", "an entry is empty"),
        ("cuda:0,,cuda:1", "an entry is empty"),
        ("all,cuda:0", "'all' stands alone"),
        ("cuda:0,gpu1", "invalid device 'gpu1'"),
        ("cpu:1,cpu", "invalid device 'cpu:1'"),
    ],
)
def test_bad_device_lists_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(torchshelf.DeviceError, match=message):
        parse_devices(spec)


def test_all_means_every_cuda_device_or_the_cpu() -> None:
    assert expand_all(0) == ["cpu"]
    assert expand_all(8) == [f"cuda:{i}" for i in range(8)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_all_on_a_machine_without_cuda_is_the_cpu_and_a_cuda_entry_is_refused() -> None:
    assert resolve_devices("all") == [torch.device("cpu")]
    assert resolve_devices("cpu,cpu") == [torch.device("cpu")] * 2
    with pytest.raises(torchshelf.DeviceError, match="no CUDA device"):
        resolve_devices("cpu,cuda:0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_all_resolves_to_every_cuda_device() -> None:
    assert resolve_devices("all") == [
        torch.device("cuda", i) for i in range(torch.cuda.device_count())
    ]


def test_cpu_threads_are_split_between_cpu_replicas() -> None:
    assert split_threads(8, ["cpu"]) == [8]
    assert split_threads(8, ["cpu", "cpu"]) == [4, 4]
    assert split_threads(1, ["cpu", "cpu", "cpu"]) == [1, 1, 1]  # never zero
    assert split_threads(8, ["cuda:0", "cpu"]) == [1, 8]
