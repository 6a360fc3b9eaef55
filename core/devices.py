"""Device strings (`cpu`, `cuda`, `cuda:N`, `mps`, and `--device` lists) -> `torch.device`.

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


ALL = "all"


def parse_devices(spec: str | None) -> list[str]:
    """`--device` as a list, one entry per model replica, without importing torch.

    `cuda:0,cuda:1` is one replica on each; a device may repeat (`cpu,cpu`: two CPU
    replicas); `all` stays `['all']` until `resolve_devices` knows what the machine has.
    """
    if spec is None:
        return ["cpu"]
    text = str(spec).strip().lower()
    if text == ALL:
        return [ALL]
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise DeviceError(
            f"invalid device list {spec!r}: an entry is empty; write e.g. cuda:0,cuda:1"
        )
    if ALL in items:
        raise DeviceError(f"invalid device list {spec!r}: 'all' stands alone, not in a list")
    out = []
    for item in items:
        try:
            out.append(parse_device(item))
        except DeviceError:
            raise DeviceError(
                f"invalid device {item!r} in {spec!r}: use cpu, cuda, cuda:N or mps, "
                "comma-separated, or all"
            ) from None
    return out


def expand_all(cuda_count: int) -> list[str]:
    """What `all` means: every CUDA device, or the CPU when there is none."""
    return [f"cuda:{i}" for i in range(cuda_count)] or ["cpu"]


def resolve_devices(spec: str | None) -> list[torch.device]:
    """Parse a `--device` list and check that every device exists here."""
    parsed = parse_devices(spec)
    if parsed == [ALL]:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        parsed = expand_all(count)
    return [resolve_device(item) for item in parsed]


def split_threads(total: int, devices: list[str]) -> list[int]:
    """Torch CPU threads for each replica: the CPU replicas share `total` so that together they
    do not oversubscribe the cores (a GPU replica needs one thread to drive its device)."""
    cpu = sum(1 for d in devices if d == "cpu")
    share = max(1, total // cpu) if cpu else 1
    return [share if d == "cpu" else 1 for d in devices]
