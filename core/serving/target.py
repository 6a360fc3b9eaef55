"""What `shelf serve TARGET` serves: a stored model's signatures or a `@service` class's apis.

`resolve_target` does everything that can fail fast (parse the target, import the class or look
the tag up, check the device) before the server binds; `Served.load` does the slow part (weights,
service `__init__`, warm-up) on the worker thread once the server is up, and returns the batch
functions the `Batcher` runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotFound, UsageError
from ..resolver import is_file_target
from .codecs import InputError, Param, TensorSpec, params_of, return_kind
from .decorators import ApiConfig, api_configs, service_config

__all__ = ["Call", "Endpoint", "Served", "resolve_target"]


@dataclass(frozen=True)
class Call:
    """One request's decoded arguments and how many batch items it carries."""

    kwargs: dict[str, Any]
    rows: int = 1
    canary: bool = False  # routed to the slot's canary version (`--canary`) on arrival


@dataclass(frozen=True)
class Endpoint:
    """One HTTP api: its route, parameters, batching and how results are wrapped."""

    name: str
    path: str
    params: list[Param]
    returns: str = "any"
    batch: bool = False
    max_batch_size: int = 32
    max_latency_ms: float = 10.0
    batch_dim: int = 0
    wrap_outputs: bool = False  # a stored model answers {"outputs": ...}
    is_async: bool = False
    input_spec: Any = None
    doc: str = ""
    stream: bool = False  # a generator api: its items are streamed (`returns` is an item's kind)

    def rows_of(self, kwargs: dict[str, Any]) -> int:
        """How many batch items a request carries; every batched parameter must agree."""
        if not self.batch:
            return 1
        counts = set()
        for p in self.params:
            v = kwargs.get(p.name)
            if p.kind == "tensor" and v is not None:
                if v.dim() <= self.batch_dim:
                    raise InputError(
                        f"{p.name}: a batch api needs a batch dimension {self.batch_dim}; "
                        f"got shape {list(v.shape)}"
                    )
                counts.add(int(v.shape[self.batch_dim]))
            elif p.kind == "list" and v is not None:
                counts.add(len(v))
        if len(counts) > 1:
            raise InputError(f"batched fields disagree on the number of items: {sorted(counts)}")
        rows = counts.pop() if counts else 1
        if rows < 1:
            raise InputError("a batch request must carry at least one item")
        return rows


@dataclass
class Served:
    """A resolved target: endpoints are known now; `load()` builds the runners later.

    `name` is what the target is served as (`/models/<name>/...`, the V2 model name): a stored
    model's name or a service's name. `version` is what computed an answer (`X-Model-Version`):
    a stored model's version, or for a service a hash of its source file.
    """

    kind: str  # "model" or "service"
    title: str
    device: str
    endpoints: list[Endpoint]
    loader: Callable[[str], dict[str, Callable[..., Any]]]
    resources: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    version: str = ""
    # `--device cuda:0,cuda:1` / `cpu,cpu`: one replica per entry (empty: just `device`, which
    # is always the first replica's device)
    replicas: tuple[str, ...] = ()

    @property
    def devices(self) -> list[str]:
        """One device per replica, in `--device` order (the replica index is the position)."""
        return list(self.replicas) or [self.device]

    def load(self, device: str | None = None) -> dict[str, Callable[..., Any]]:
        """Load weights / build the service on `device` (default: the first replica's) and warm
        up; returns the callable of each api."""
        return self.loader(self.device if device is None else device)


# -- target parsing -----------------------------------------------------------------------------


def _import_file(path: Path) -> Any:
    from ..resolver import import_file

    if not Path(path).is_file():
        raise NotFound(f"no such file: {Path(path).resolve()}")
    return import_file(path, "torchshelf_service")


def _service_class(target: str) -> type | None:
    """The class named by `file.py:Class` or `module:Class`, or None if TARGET names no
    importable module attribute (a tag such as `resnet:v2` then)."""
    left, sep, attr = target.rpartition(":")
    if not sep or not attr.isidentifier():
        return None
    if is_file_target(left):
        module = _import_file(Path(left))
    else:
        if not all(part.isidentifier() for part in left.split(".")):
            return None
        try:
            spec = importlib.util.find_spec(left)
        except (ImportError, ValueError):
            return None
        if spec is None or spec.origin is None:  # absent, or a bare directory (namespace)
            return None
        try:
            module = importlib.import_module(left)
        except Exception as exc:
            raise UsageError(f"importing {left} failed: {type(exc).__name__}: {exc}") from exc
    obj = getattr(module, attr, None)
    if obj is None:
        if not is_file_target(left):
            return None
        raise NotFound(f"{left} has no attribute {attr!r}")
    if not inspect.isclass(obj):
        raise UsageError(f"{target} is not a class; decorate a class with @torchshelf.service")
    return obj


def resolve_target(target: str, device: str | None = None) -> Served:
    """Turn TARGET into a `Served`: a stored model's tag, or a `file.py:Class` /
    `module:Class` service.

    A `.py` path is always a service. Otherwise a version in the store wins, so a tag is never
    taken for a module that happens to share its name; then `module:Class` is tried.
    `device` is a device string already checked by the caller, or None for the default (CUDA when
    a service asks for a gpu and CUDA is there, else CPU).
    """
    from ..errors import InvalidName

    left = target.rpartition(":")[0]
    if not is_file_target(left):
        try:
            return _serve_model(target, device)
        except (NotFound, InvalidName) as exc:
            lookup_error: Exception = exc
    else:
        lookup_error = NotFound(f"no such file: {left}")
    klass = _service_class(target)
    if klass is not None:
        return _serve_class(klass, device)
    if ":" in target and not isinstance(lookup_error, InvalidName):
        raise NotFound(
            f"{target!r} is neither a stored model (see `shelf list`) nor an importable "
            "module:Class; for a file, give its path: path/to/file.py:Class"
        )
    raise lookup_error


def _default_device(wants_gpu: bool) -> str:
    if wants_gpu:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


# -- stored models ------------------------------------------------------------------------------


def _served_batch_dim(tag: object, method: str, dims: tuple[int, int]) -> int:
    """The one batch dimension a stored signature is served with (input and output share it)."""
    if dims[0] != dims[1]:
        from ..errors import UsageError

        raise UsageError(
            f"{tag} signature {method!r} has batch_dim={dims}: serving splits results along the "
            "input's batch dimension, so it needs the same input and output dimension"
        )
    return dims[0]


def _serve_model(tag: str, device: str | None) -> Served:
    from ..lifecycle import get as store_get

    ref = store_get(tag)
    endpoints = []
    for method, sig in ref.signatures.items():
        spec = TensorSpec.from_signature(sig.get("input_spec"))
        name = "predict" if method == "__call__" else method
        endpoints.append(
            Endpoint(
                name=name,
                path=f"/{name}",
                params=[Param("inputs", "tensor", spec=spec)],
                returns="tensor",
                batch=bool(sig.get("batchable", False)),
                max_batch_size=int(sig.get("max_batch_size", 32)),
                max_latency_ms=float(sig.get("max_latency_ms", 10.0)),
                batch_dim=_served_batch_dim(ref.tag, method, sig.batch_dim),
                wrap_outputs=True,
                input_spec=sig.get("input_spec"),
                doc=f'Run `{method}` of {ref.tag} on `inputs`; answers {{"outputs": ...}}.',
            )
        )
    methods = {("predict" if m == "__call__" else m): m for m in ref.signatures}
    by_name = {e.name: e for e in endpoints}

    def load(dev: str) -> dict[str, Callable[..., Any]]:
        model = ref.load_model(device_id=dev)
        fns: dict[str, Callable[..., Any]] = {}
        for name, method in methods.items():
            fn = model if method == "__call__" else getattr(model, method, None)
            if fn is None:
                raise UsageError(f"{ref.tag} has no method {method!r} named in its signatures")
            fns[name] = _positional(fn)
            _warm_up(fns[name], by_name[name], dev)
        return fns

    return Served(
        kind="model",
        title=str(ref.tag),
        device=device or "cpu",
        endpoints=endpoints,
        loader=load,
        details={"format": ref.manifest.format if hasattr(ref, "manifest") else None},
        name=ref.tag.name,
        version=ref.version,
    )


def _positional(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(inputs: Any) -> Any:
        return fn(inputs)

    return call


def _warm_up(fn: Callable[..., Any], ep: Endpoint, device: str) -> None:
    """One forward with zeros shaped by the input spec (free dims = 1), when there is one."""
    spec = ep.params[0].spec if ep.params else None
    if spec is None or spec.shape is None:
        return
    import torch

    shape = [1 if d == -1 else d for d in spec.shape]
    x = torch.zeros(shape, dtype=spec.torch_dtype() or torch.float32, device=device)
    with torch.inference_mode():
        fn(x)
        if ep.batch and spec.shape[ep.batch_dim] == -1 and ep.max_batch_size > 1:
            shape[ep.batch_dim] = ep.max_batch_size
            fn(torch.zeros(shape, dtype=x.dtype, device=device))


# -- service classes ----------------------------------------------------------------------------


def _serve_class(klass: type, device: str | None) -> Served:
    cfg = service_config(klass)
    apis = api_configs(klass)
    if not apis:
        raise UsageError(
            f"{klass.__name__} has no api: decorate at least one method with @torchshelf.api"
        )
    endpoints = [_endpoint_of(getattr(klass, attr), api) for attr, api in apis.items()]
    paths = [e.path for e in endpoints]
    reserved = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/schema", "/docs"}
    for p in paths:
        if paths.count(p) > 1 or p in reserved:
            raise UsageError(f"api route {p} is used twice or reserved; rename the method")

    def load(dev: str) -> dict[str, Callable[..., Any]]:
        init = inspect.signature(klass)
        instance = klass(device=dev) if "device" in init.parameters else klass()
        if dev != "cpu":
            _move_modules(instance, dev)
        return {api.name: getattr(instance, attr) for attr, api in apis.items()}

    return Served(
        kind="service",
        title=f"{klass.__module__.removeprefix('torchshelf_service_')}:{klass.__qualname__}",
        device=device or _default_device(cfg.wants_gpu),
        endpoints=endpoints,
        loader=load,
        resources=cfg.resources,
        details={"service": cfg.name},
        name=cfg.name,
        version=_source_version(klass),
    )


def _source_version(klass: type) -> str:
    """A service's version: the first 12 hex digits of its source file's sha256."""
    import hashlib
    import sys

    path = getattr(sys.modules.get(klass.__module__), "__file__", None)
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] if path else "0"
    except OSError:
        return "0"


def _endpoint_of(func: Callable[..., Any], api: ApiConfig) -> Endpoint:
    params = params_of(func)
    if api.batch:
        for p in params:
            if p.kind not in ("list", "tensor"):
                raise UsageError(
                    f"batch api {api.name!r}: parameter {p.name!r} must be a list[...] or a "
                    "torch.Tensor, since each client sends a list of items"
                )
        if inspect.iscoroutinefunction(func):
            raise UsageError(f"batch api {api.name!r} must be a plain def, not async def")
    return Endpoint(
        name=api.name,
        path=api.path,
        params=params,
        returns=return_kind(func),
        batch=api.batch,
        max_batch_size=api.max_batch_size,
        max_latency_ms=api.max_latency_ms,
        batch_dim=api.batch_dim,
        is_async=inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func),
        doc=inspect.getdoc(func) or "",
        stream=api.stream,
    )


def _move_modules(instance: Any, device: str) -> None:
    """Put the service's models on the serving device (its inputs are moved there too)."""
    import torch

    for attr, value in list(vars(instance).items()):
        if isinstance(value, torch.nn.Module):
            setattr(instance, attr, value.to(device))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, torch.nn.Module):
                    value[k] = v.to(device)


# -- running one batch (on the worker thread) ---------------------------------------------------


def make_runner(
    ep: Endpoint, fn: Callable[..., Any], device: str
) -> Callable[[list[Call]], Sequence[Any]]:
    """The batch function for `ep`: merge calls, move to the device, run, split back."""
    import torch

    on_cpu = device == "cpu"
    dev = torch.device(device)
    tensor_params = [p.name for p in ep.params if p.kind == "tensor"]
    list_params = [p.name for p in ep.params if p.kind == "list"]
    dim = ep.batch_dim

    def to_dev(kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_cpu or not tensor_params:
            return kwargs
        out = dict(kwargs)
        for name in tensor_params:
            v = out.get(name)
            if isinstance(v, torch.Tensor):
                out[name] = v.to(dev, non_blocking=True)
        return out

    if not ep.batch:

        def run_one(calls: list[Call]) -> list[Any]:
            with torch.inference_mode():
                out = fn(**to_dev(calls[0].kwargs))
            return [out if on_cpu else _to_cpu(out)]

        return run_one

    def run_batch(calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            merged = calls[0].kwargs
        else:
            merged = {}
            for name in tensor_params:
                merged[name] = torch.cat([c.kwargs[name] for c in calls], dim=dim)
            for name in list_params:
                merged[name] = [item for c in calls for item in c.kwargs[name]]
        rows = [c.rows for c in calls]
        total = sum(rows)
        with torch.inference_mode():
            out = fn(**to_dev(merged))
        if not on_cpu:
            out = _to_cpu(out)
        return _split(out, rows, total, dim)

    return run_batch


def _to_cpu(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _split(out: Any, rows: list[int], total: int, dim: int) -> list[Any]:
    """Cut a batch result back into one result per caller (k rows each)."""
    import torch

    if len(rows) == 1:
        return [out]
    if isinstance(out, torch.Tensor):
        if out.dim() <= dim or out.shape[dim] != total:
            raise ValueError(
                f"the batch returned a tensor of shape {list(out.shape)}; expected {total} "
                f"items along dimension {dim}"
            )
        return list(torch.split(out, rows, dim=dim))
    if isinstance(out, dict):
        parts = {k: _split(v, rows, total, dim) for k, v in out.items()}
        return [{k: parts[k][i] for k in out} for i in range(len(rows))]
    if isinstance(out, tuple) and out and all(isinstance(v, torch.Tensor) for v in out):
        items = [_split(v, rows, total, dim) for v in out]
        return [tuple(p[i] for p in items) for i in range(len(rows))]
    if isinstance(out, list):
        if len(out) != total:
            raise ValueError(f"the batch api returned {len(out)} results for {total} items")
        res, start = [], 0
        for k in rows:
            res.append(out[start : start + k])
            start += k
        return res
    raise ValueError(f"cannot split a batch result of type {type(out).__name__} between callers")


def resolve_targets(targets: Sequence[str], device: str | None = None) -> list[Served]:
    """Resolve every TARGET (tags and services) on `device` (checked here: it must exist);
    everything that can be wrong with the command fails here, before the server binds."""
    from ..devices import parse_devices, resolve_device, resolve_devices
    from ..errors import UsageError

    if not targets:
        raise UsageError("give at least one TARGET to serve")
    devices: list[str] = []
    if device is not None:
        parse_devices(device)  # a malformed string fails before anything heavy is imported
        devices = [str(d) for d in resolve_devices(device)]
    served = []
    for target in targets:
        one = resolve_target(target, devices[0] if devices else None)
        if not devices and one.device != "cpu":
            one.device = str(resolve_device(one.device))
        if len(devices) > 1:
            one.replicas = tuple(devices)  # one replica per device, in --device order
        served.append(one)
    names = [s.name for s in served]
    for name in names:
        if names.count(name) > 1:
            raise UsageError(
                f"{name!r} is named by more than one TARGET; serve each model name once"
            )
    return served
