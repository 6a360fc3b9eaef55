"""The `@service` and `@api` decorators: they only record configuration on the class and methods.

Nothing here imports torch or a web framework, so decorating a class costs nothing; `shelf serve`
reads the records (`ServiceConfig`, `ApiConfig`) when it builds the server.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from .streaming import is_stream_function

__all__ = ["ApiConfig", "ServiceConfig", "api", "service", "service_config", "api_configs"]

_API_ATTR = "__torchshelf_api__"
_SERVICE_ATTR = "__torchshelf_service__"

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ApiConfig:
    """How one method is served: its route name and, for `batch=True`, how calls are merged;
    `stream` is True for a generator method, whose items are streamed."""

    name: str
    batch: bool = False
    max_batch_size: int = 32
    max_latency_ms: float = 10.0
    batch_dim: int = 0
    route: str | None = None
    stream: bool = False

    @property
    def path(self) -> str:
        """The HTTP path: `/<method name>` unless `route` says otherwise."""
        return "/" + (self.route or self.name).lstrip("/")


@dataclass(frozen=True)
class ServiceConfig:
    """What `@service(...)` recorded: resources (shown in the banner; `gpu` picks the default
    device when CUDA is there) and any extra options, kept as given."""

    name: str
    resources: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def wants_gpu(self) -> bool:
        """True when `resources` asks for at least one GPU."""
        gpu = self.resources.get("gpu")
        try:
            return gpu is not None and float(gpu) > 0
        except (TypeError, ValueError):
            return bool(gpu)


@overload
def api(func: F, /) -> F: ...


@overload
def api(
    *,
    batch: bool = False,
    max_batch_size: int = 32,
    max_latency_ms: float = 10.0,
    batch_dim: int | tuple[int, int] = 0,
    route: str | None = None,
    batchable: bool = False,
) -> Callable[[F], F]: ...


def api(
    func: Callable[..., Any] | None = None,
    /,
    *,
    batch: bool = False,
    max_batch_size: int = 32,
    max_latency_ms: float = 10.0,
    batch_dim: int | tuple[int, int] = 0,
    route: str | None = None,
    batchable: bool = False,
) -> Any:
    """Mark a service method as an HTTP api, served as `POST /<method name>`.

    With `batch=True`, each client sends a list of items and concurrent calls are merged, up to
    `max_batch_size` items, into one call of the method, which returns a list of the same length
    (or, for a `torch.Tensor` parameter, a tensor split back along `batch_dim`). A lone request is
    never held back; `max_latency_ms` bounds how long a batch may wait to fill under load.
    `batchable=True` is BentoML's spelling of `batch=True`; its `batch_dim=(in, out)` pair is
    taken when both dimensions agree.

    A generator (or async generator) method streams its items as they are yielded: Server-Sent
    Events by default, NDJSON for `Accept: application/x-ndjson`. Streaming apis are not batched.

    Example:
        >>> @torchshelf.api(batch=True, max_batch_size=32, max_latency_ms=10)
        ... def embed(self, texts: list[str]) -> list[list[float]]: ...
        >>> @torchshelf.api
        ... def generate(self, prompt: str) -> Iterator[str]:
        ...     yield from self.tokens(prompt)
    """
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    if max_latency_ms < 0:
        raise ValueError("max_latency_ms must be >= 0")
    dim = _one_batch_dim(batch_dim)

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError("@torchshelf.api decorates a method")
        stream = is_stream_function(fn)
        if stream and batch:
            raise TypeError(
                f"{fn.__name__} is a generator, so it streams; a streaming api cannot be "
                "batch=True (drop batch=True, or return a list instead of yielding)"
            )
        cfg = ApiConfig(
            name=fn.__name__,
            batch=bool(batch or batchable),
            max_batch_size=int(max_batch_size),
            max_latency_ms=float(max_latency_ms),
            batch_dim=dim,
            route=route,
            stream=stream,
        )
        setattr(fn, _API_ATTR, cfg)
        return fn

    return mark(func) if func is not None else mark


def _one_batch_dim(batch_dim: int | tuple[int, int]) -> int:
    """An int, or BentoML's `(in, out)` pair when both agree (results split along the input's)."""
    if isinstance(batch_dim, (tuple, list)):
        if len(batch_dim) != 2 or batch_dim[0] != batch_dim[1]:
            raise ValueError(
                f"batch_dim={tuple(batch_dim)!r}: @api splits results along the input's batch "
                "dimension, so the input and output dimensions must be the same"
            )
        batch_dim = batch_dim[0]
    if not isinstance(batch_dim, int) or isinstance(batch_dim, bool):
        raise ValueError(f"batch_dim must be an integer, not {batch_dim!r}")
    return batch_dim


@overload
def service(cls: C, /) -> C: ...


@overload
def service(
    *, resources: dict[str, Any] | None = None, name: str | None = None, **options: Any
) -> Callable[[C], C]: ...


def service(
    cls: type | None = None,
    /,
    *,
    resources: dict[str, Any] | None = None,
    name: str | None = None,
    **options: Any,
) -> Any:
    """Mark a class as a servable service: `shelf serve file.py:Class` runs it.

    `resources` (e.g. `{"gpu": "1", "memory": "4Gi"}`) is recorded and shown at start-up; a `gpu`
    entry makes CUDA the default device when this machine has it. Other keyword options are kept
    in `ServiceConfig.options` so code written for similar decorators still imports.

    Example:
        >>> @torchshelf.service(resources={"gpu": "1"})
        ... class Classifier:
        ...     def __init__(self):
        ...         self.model = torchshelf.load_model("classifier:latest")
        ...     @torchshelf.api
        ...     def predict(self, x: torch.Tensor) -> torch.Tensor:
        ...         return self.model(x)
    """

    def mark(klass: type) -> type:
        if not inspect.isclass(klass):
            raise TypeError("@torchshelf.service decorates a class")
        cfg = ServiceConfig(
            name=name or klass.__name__, resources=dict(resources or {}), options=dict(options)
        )
        setattr(klass, _SERVICE_ATTR, cfg)
        return klass

    return mark(cls) if cls is not None else mark


def service_config(klass: type) -> ServiceConfig:
    """The recorded `ServiceConfig`, or defaults for an undecorated class."""
    cfg = klass.__dict__.get(_SERVICE_ATTR)
    return cfg if isinstance(cfg, ServiceConfig) else ServiceConfig(name=klass.__name__)


def api_configs(klass: type) -> dict[str, ApiConfig]:
    """Every `@api` method of a class (inherited ones included), by method name, in definition
    order."""
    found: dict[str, ApiConfig] = {}
    for base in reversed(klass.__mro__):
        for attr, value in base.__dict__.items():
            cfg = getattr(value, _API_ATTR, None)
            if isinstance(cfg, ApiConfig):
                found[attr] = cfg
    return found
