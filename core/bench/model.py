"""Model mode: time a model's forward pass in this process, per batch size and variant.

The measuring loop (`measure_callable`) takes any callable plus an input description, so it can be
used (and tested) without the store; `bench_model` resolves a tag or a `file.py:attr` to a module
and calls it. Timing rules, each for a reason:

- `time.perf_counter_ns` around each call: monotonic, and integer nanoseconds do not lose
  resolution on a long-running process.
- CUDA/MPS work is asynchronous, so the device is synchronised before the end timer is read;
  otherwise we would time the kernel launch, not the kernel.
- Warm-up iterations (allocator, autotuning, torch.compile) run before anything is recorded.
- Windows repeat until the last three agree (see `report.windows_agree`), as perf_analyzer does,
  because a single window on a shared machine can be an outlier in either direction.
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import UsageError
from ..signature import batch_dims
from .report import (
    BenchReport,
    LatencyStats,
    ModelResult,
    Window,
    busy_machine_warnings,
    windows_agree,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "InputSpec",
    "ModelBenchSettings",
    "Progress",
    "input_spec_from_signatures",
    "normalise_dtype",
    "resolve_input_spec",
    "measure_callable",
    "bench_model",
]

# (label, windows done, most windows, finished)
Progress = Callable[[str, int, int, bool], None]


def normalise_dtype(name: str, flag: str = "--dtype") -> str:
    """The torch name of a dtype given by any name in the one dtype table (`half` -> float16)."""
    row = dtypes.find(name)
    if row is None:
        raise UsageError(
            f"{flag} {name!r} is not a dtype bench can make inputs for; use one of "
            + ", ".join(dtypes.spec_names())
        )
    return row.name


@dataclass(frozen=True)
class InputSpec:
    """What one input item looks like: its shape without the batch dimension, and dtype."""

    item_shape: tuple[int, ...]
    dtype: str = "float32"
    batch_dim: int = 0

    def batch_shape(self, batch_size: int) -> tuple[int, ...]:
        """The full tensor shape for `batch_size` items."""
        shape = list(self.item_shape)
        shape.insert(self.batch_dim, batch_size)
        return tuple(shape)


def parse_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    """`"3,224,224"` -> `(3, 224, 224)`; positive integers only."""
    cleaned = str(text).strip().strip("()[]")
    try:
        dims = tuple(int(p) for p in cleaned.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not a shape: give one item's dimensions without the batch "
            "dimension, e.g. 3,224,224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"{flag} {text!r} needs positive dimensions, e.g. 3,224,224")
    return dims


def input_spec_from_signatures(
    signatures: dict[str, Any] | None, method: str = "__call__"
) -> InputSpec | None:
    """The `InputSpec` stored in a model's signature, or None when it has none we can use.

    A signature's `input_spec.shape` is the full shape, with the batch dimension at `batch_dim`
    and -1 for free dimensions. Free dimensions other than the batch one cannot be invented,
    so such a spec is treated as absent (the caller then asks for `--input-shape`).
    """
    if not signatures:
        return None
    sig = signatures.get(method)
    if sig is None and len(signatures) == 1:
        sig = next(iter(signatures.values()))
    if not isinstance(sig, dict):
        return None
    spec = sig.get("input_spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), (list, tuple)):
        return None
    shape = [int(d) for d in spec["shape"]]
    batch_dim = batch_dims(sig.get("batch_dim", 0))[0] if sig.get("batchable", True) else None
    if batch_dim is None:
        # Not batchable: the stored shape is the shape of the one input; bench adds no batch dim
        # of its own, so only batch size 1 makes sense and we model it as a leading dim of 1.
        if shape and shape[0] in (1, -1):
            shape, batch_dim = shape[1:], 0
        else:
            return None
    else:
        if batch_dim < 0:
            batch_dim += len(shape)
        if not 0 <= batch_dim < len(shape):
            return None
        shape.pop(batch_dim)
    if any(d <= 0 for d in shape):
        return None
    dtype = normalise_dtype(spec.get("dtype", "float32"), "signature dtype")
    return InputSpec(tuple(shape), dtype, batch_dim)


def resolve_input_spec(
    signatures: dict[str, Any] | None,
    input_shape: str | Sequence[int] | None,
    dtype: str | None,
    *,
    target: str = "the model",
    method: str = "__call__",
) -> InputSpec:
    """Flags win over the stored signature; neither is an error that names the flag to pass."""
    stored = input_spec_from_signatures(signatures, method)
    if input_shape is not None:
        shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
        batch_dim = stored.batch_dim if stored and len(stored.item_shape) == len(shape) else 0
        chosen = normalise_dtype(dtype) if dtype else (stored.dtype if stored else "float32")
        return InputSpec(tuple(shape), chosen, batch_dim)
    if stored is None:
        raise UsageError(
            f"{target} has no input spec in its signature: pass --input-shape with one item's "
            "shape, without the batch dimension (e.g. --input-shape 3,224,224), and --dtype if "
            "it is not float32"
        )
    return InputSpec(
        stored.item_shape, normalise_dtype(dtype) if dtype else stored.dtype, stored.batch_dim
    )


@dataclass(frozen=True)
class ModelBenchSettings:
    """How to measure: the knobs of `shelf bench TAG`, recorded in the JSON for CI to diff."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup: int = 10
    duration_s: float = 1.0  # length of one measurement window
    iterations: int | None = None  # fixed iterations per window instead of a duration
    stability: float = 0.10
    max_windows: int = 10
    compile: bool = False
    channels_last: bool = False
    threads: int | None = None  # torch intra-op threads; None keeps torch's default

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError("--batch-sizes needs positive integers, e.g. 1,8,32")
        if self.warmup < 0:
            raise UsageError("--warmup must be >= 0")
        if self.iterations is None and not self.duration_s > 0:
            raise UsageError("--duration must be a positive number of seconds")
        if self.iterations is not None and self.iterations < 1:
            raise UsageError("--iterations must be >= 1")
        if not self.stability > 0:
            raise UsageError("--stability must be a positive percentage, e.g. 10%")
        if self.max_windows < 3:
            raise UsageError("--max-windows must be at least 3 (stability compares the last 3)")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy for the report."""
        return {**asdict(self), "batch_sizes": list(self.batch_sizes)}


# --- peak memory --------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False if we can't."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_worked: bool) -> int:
    if reset_worked:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    # Lifetime peak: an upper bound when the per-run reset is not available.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# --- measuring ----------------------------------------------------------------------------------


def _make_batch(spec: InputSpec, batch_size: int, device: torch.device) -> torch.Tensor:
    import torch

    dtype = getattr(torch, spec.dtype)
    shape = spec.batch_shape(batch_size)
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=gen).to(dtype)
    elif dtype == torch.bool:
        x = torch.randint(0, 2, shape, generator=gen).bool()
    else:
        x = torch.randint(0, 100, shape, generator=gen).to(dtype)  # small ids suit embeddings
    return x.to(device)


def _synchroniser(device: torch.device) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def _time_window(
    call: Callable[[Any], Any],
    x: Any,
    sync: Callable[[], None],
    duration_ns: int,
    iterations: int | None,
) -> list[int]:
    """Run one window; return per-call durations in ns. Kept minimal: it is the timed path."""
    samples: list[int] = []
    append = samples.append
    clock = time.perf_counter_ns
    if iterations is not None:
        for _ in range(iterations):
            t0 = clock()
            call(x)
            sync()
            append(clock() - t0)
        return samples
    end = clock() + duration_ns
    while True:
        t0 = clock()
        call(x)
        sync()
        t1 = clock()
        append(t1 - t0)
        if t1 >= end:
            return samples


def measure_callable(
    call: Callable[[Any], Any],
    spec: InputSpec,
    settings: ModelBenchSettings,
    *,
    device: str | torch.device = "cpu",
    variant: str = "eager",
    channels_last: bool = False,
    progress: Progress | None = None,
) -> list[ModelResult]:
    """Measure `call(batch)` for every batch size in `settings`; the core of model mode.

    Example:
        >>> spec = InputSpec((16,))
        >>> results = measure_callable(torch.nn.Linear(16, 4), spec,
        ...                            ModelBenchSettings(batch_sizes=(1, 8), duration_s=0.1))
    """
    import torch

    from ..devices import resolve_device

    dev = resolve_device(device)
    sync = _synchroniser(dev)
    results: list[ModelResult] = []
    duration_ns = int(settings.duration_s * 1e9)
    with torch.inference_mode():
        for batch_size in settings.batch_sizes:
            label = f"{variant} batch {batch_size}"
            x = _make_batch(spec, batch_size, dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            reset_ok = _reset_peak_rss()
            for _ in range(settings.warmup):
                call(x)
            sync()
            windows: list[Window] = []
            samples_per_window: list[list[int]] = []
            stable = False
            for _ in range(settings.max_windows):
                samples = _time_window(call, x, sync, duration_ns, settings.iterations)
                samples_per_window.append(samples)
                mean_s = sum(samples) / len(samples) / 1e9
                p50 = sorted(samples)[len(samples) // 2] / 1e6
                windows.append(Window(batch_size / mean_s, p50))
                stable = windows_agree(windows, settings.stability)
                if progress:
                    progress(label, len(windows), settings.max_windows, stable)
                if stable:
                    break
            if progress and not stable:
                progress(label, len(windows), settings.max_windows, True)
            # Report the last three windows together: the ones the stability rule judged.
            kept = [s for window in samples_per_window[-3:] for s in window]
            stats = LatencyStats.from_ns(kept)
            total_s = sum(kept) / 1e9
            if dev.type == "cuda":
                peak: int | None = int(torch.cuda.max_memory_allocated(dev))
            elif dev.type == "cpu":
                peak = _peak_rss_bytes(reset_ok)
            else:
                peak = None
            results.append(
                ModelResult(
                    batch_size=batch_size,
                    variant=variant,
                    latency=stats,
                    throughput_per_s=batch_size * len(kept) / total_s,
                    peak_memory_bytes=peak,
                    iterations=len(kept),
                    windows=len(windows),
                    stable=stable,
                )
            )
            del x
    return results


# --- targets ------------------------------------------------------------------------------------


def _load_python_target(target: str) -> Any:
    """`path/to/file.py:attr` -> the object (called if it is a factory rather than a module)."""
    import torch

    from ..resolver import resolve

    path_text = target.rpartition(":")[0]
    if not Path(path_text).is_file():
        raise UsageError(f"{path_text!r} is not a file; TARGET is a tag or path/to/file.py:attr")
    obj, _, _ = resolve(target, "_torchshelf_bench")
    if not isinstance(obj, torch.nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, torch.nn.Module):
        raise UsageError(f"{target!r} is not an nn.Module or a factory returning one")
    return obj


def _signature_method(signatures: dict[str, Any] | None) -> str:
    """The method to time: `__call__` unless the model's only signature names another."""
    if not signatures or "__call__" in signatures or len(signatures) != 1:
        return "__call__"
    return next(iter(signatures))


def _is_python_target(target: str) -> bool:
    from ..resolver import is_file_target

    head, sep, _ = target.rpartition(":")
    return bool(sep) and is_file_target(head)


def _variants(settings: ModelBenchSettings) -> list[tuple[str, bool, bool]]:
    """(name, compile, channels_last): eager always, plus the variant the flags ask for."""
    out = [("eager", False, False)]
    if settings.compile or settings.channels_last:
        name = "+".join(
            n
            for n, on in (("compile", settings.compile), ("channels-last", settings.channels_last))
            if on
        )
        out.append((name, settings.compile, settings.channels_last))
    return out


def bench_model(
    target: str,
    settings: ModelBenchSettings,
    *,
    device: str | None = None,
    input_shape: str | Sequence[int] | None = None,
    dtype: str | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Benchmark a stored model (`name[:version]`) or a `file.py:attr` module.

    Example:
        >>> report = bench_model("resnet:latest", ModelBenchSettings(batch_sizes=(1, 32)))
        >>> report.to_dict()["results"][0]["latency_ms"]["p50"]
    """
    from ..devices import parse_device

    parse_device(device)
    # Everything that can be checked from the manifest is checked before torch is imported
    # (about a second here), so a missing --input-shape fails at once.
    ref = None
    signatures: dict[str, Any] | None = None
    shown = target
    if not _is_python_target(target):
        import torchshelf

        ref = torchshelf.get(target)
        shown = str(getattr(ref, "tag", target))
        signatures = getattr(ref, "signatures", None)
    spec = resolve_input_spec(signatures, input_shape, dtype, target=shown)
    if settings.channels_last and len(spec.item_shape) != 3:
        raise UsageError(
            f"--channels-last needs 4-D inputs (N, C, H, W); this input is one item of shape "
            f"{list(spec.item_shape)} plus the batch dimension"
        )

    import torch

    from ..devices import resolve_device

    dev = resolve_device(device)
    if settings.threads is not None:
        # On a shared machine, fewer intra-op threads than cores avoids waiting on a thread
        # that the OS has descheduled; a knob to compare, like --compile.
        torch.set_num_threads(settings.threads)
    if ref is None:
        model = _load_python_target(target).to(dev).eval()
    else:
        import torchshelf

        model = torchshelf.load_model(shown, device_id=str(dev))

    results: list[ModelResult] = []
    warnings: list[str] = busy_machine_warnings()
    method = _signature_method(signatures)
    for name, use_compile, use_cl in _variants(settings):
        candidate = model
        if use_cl:
            candidate = copy.deepcopy(model).to(memory_format=torch.channels_last)
        call: Callable[[Any], Any] = (
            candidate if method == "__call__" else getattr(candidate, method)
        )
        variant_settings = settings
        if use_compile:
            call = torch.compile(call, dynamic=False)
            # Compilation happens on the first call: never let it land in a timed window.
            variant_settings = dataclasses.replace(settings, warmup=max(settings.warmup, 2))
        results += measure_callable(
            call,
            spec,
            variant_settings,
            device=dev,
            variant=name,
            channels_last=use_cl,
            progress=progress,
        )
    for r in results:
        if not r.stable:
            warnings.append(
                f"{r.variant} batch {r.batch_size}: the last 3 of {r.windows} windows never "
                f"agreed within {settings.stability:.0%}; numbers are noisy (try a longer "
                "--duration or a quieter machine)"
            )
    return BenchReport(
        mode="model",
        target=shown,
        device=str(dev),
        torch=torch.__version__,
        settings={
            **settings.to_dict(),
            "input_shape": list(spec.item_shape),
            "dtype": spec.dtype,
            "batch_dim": spec.batch_dim,
            "method": method,
            "torch_threads": torch.get_num_threads(),
        },
        results=list(results),
        warnings=warnings,
    )
