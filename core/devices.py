"""Device strings (`cpu`, `cuda`, `cuda:N`, `mps`) -> `torch.device`, with clear errors.

Parsing needs no torch, so bad strings fail fast in the CLI; availability is checked with torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import torch

_DEVICE_RE = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


def parse_device(spec: str | None) -> str:
    """Normalise a device string without importing torch; `None` means `cpu`."""
    if spec is None:
        return "cpu"
    text = str(spec).strip().lower()
    match = _DEVICE_RE.match(text)
    if not match:
        raise DeviceError(f"invalid device {spec!r}: use cpu, cuda, cuda:N or mps")
    kind, index = match.groups()
    if kind == "cpu" and index not in (None, "0"):
        raise DeviceError(f"invalid device {spec!r}: cpu takes no index")
    if kind == "cpu":
        return "cpu"
    return f"{kind}:{int(index)}" if index is not None else kind


def available_devices() -> list[str]:
    """The device strings this machine can use, e.g. `['cpu', 'cuda:0', 'cuda:1']`."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """Parse `spec` and check that the device exists here; raise `DeviceError` if not."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    text = parse_device(spec)
    if text == "cpu":
        return torch.device("cpu")
    have = available_devices()
    if text == "mps":
        if "mps" not in have:
            raise DeviceError(f"device 'mps' is not available here; available: {', '.join(have)}")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {text!r} is not available: this machine has no CUDA device "
            f"(available: {', '.join(have)}); pass --device cpu"
        )
    if text == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    index = int(text.split(":")[1])
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {text!r} does not exist; available: {', '.join(have)}")
    return torch.device("cuda", index)
