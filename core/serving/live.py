"""Serving a followed label (`shelf serve NAME --label ...`): build versions, swap them in.

The registry slot of NAME holds the live `LoadedModel` (and, with `--canary`, a second one);
this module connects it to the `Follower` (follow.py), which decides *which* version to serve:

- `build_version` loads a version from the local store onto the slot's device, then warms it up,
  each failure a `VersionFailed` naming its stage, and returns a `LoadedModel` ready to swap in;
- `Following.apply` is the follower's callback (it runs on the follower's thread): it builds the
  new version there, beside the old one, then asks the event loop to swap it into the slot
  (`ModelRegistry.swap`: new batches take it, the batch running finishes on the old one, which
  is released after it) or, with `--swap drain`, to drain the slot, release the old version and
  only then build the new one (`ModelRegistry.drain_swap`);
- `prepare_following` evaluates the selection before the server binds.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .follow import (
    CANARY,
    DEFAULT_INTERVAL,
    PRIMARY,
    SWAP_MODES,
    Canary,
    CanarySplit,
    Follower,
    LocalSource,
    RemoteSource,
    Selection,
    VersionFailed,
)
from .loaded import LoadedModel
from .target import Endpoint, Served

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ..manifest import Manifest
    from ..store import Store
    from .app import ServeApp
    from .options import ServeOptions
    from .protocol import HandlerFactory
    from .registry import ModelRegistry

__all__ = [
    "FollowCollector",
    "FollowSpec",
    "Following",
    "build_version",
    "prepare_following",
    "serve_label",
]


def _api_methods(ref: Any, endpoints: Sequence[Endpoint]) -> dict[str, tuple[str, Endpoint]]:
    """api name -> (model method, the served endpoint with this version's input spec)."""
    from .codecs import Param, TensorSpec

    served = {ep.name: ep for ep in endpoints}
    out = {}
    for method, sig in ref.signatures.items():
        name = "predict" if method == "__call__" else method
        if name in served:
            spec = TensorSpec.from_signature(sig.get("input_spec"))
            ep = replace(served[name], params=[Param("inputs", "tensor", spec=spec)])
            out[name] = (method, ep)
    if set(out) != set(served) or len(out) != len(ref.signatures):
        raise VersionFailed(
            "load",
            str(ref.tag),
            f"its signatures {sorted(ref.signatures)} do not match the served apis "
            f"{sorted(served)}; restart the server to serve a model with other signatures",
        )
    return out


def build_version(
    store: Store, manifest: Manifest, served: Served, endpoints: Sequence[Endpoint]
) -> LoadedModel:
    """Load `manifest` onto each of `served.devices` (one replica each) and warm every api up;
    its apis must be the served ones. The answer carries this version's name (`X-Model-Version`)."""
    from ..model import Model
    from .target import _positional, _warm_up

    tag = f"{manifest.name}:{manifest.version}"
    ref = Model(store, manifest)
    apis = _api_methods(ref, endpoints)
    replicas: list[dict[str, Any]] = []  # one copy per `--device` entry (scale: replicas)
    try:
        for device in served.devices:
            model = ref.load_model(device_id=device)
            fns = {}
            for name, (method, _) in apis.items():
                fn = model if method == "__call__" else getattr(model, method, None)
                if fn is None:
                    raise AttributeError(f"{tag} has no method {method!r} named in its signatures")
                fns[name] = _positional(fn)
            replicas.append(fns)
            del model
    except Exception as exc:
        raise VersionFailed("load", tag, exc) from exc
    version = replace(served, version=manifest.version, title=tag)
    loaded = LoadedModel(version, endpoints, replicas)
    try:
        for fns, device in zip(replicas, served.devices, strict=True):
            for name, fn in fns.items():
                _warm_up(fn, apis[name][1], device)
    except Exception as exc:
        replicas.clear()
        loaded.release()
        raise VersionFailed("warmup", tag, exc) from exc
    return loaded


@dataclass(frozen=True)
class FollowSpec:
    """What `shelf serve NAME --label ...` asked for (already parsed and checked)."""

    selection: Selection
    canary: Canary | None = None
    remote: str | None = None  # None: the local store; "" the configured remote; or a URL
    watch: bool = False
    interval: float = DEFAULT_INTERVAL
    swap: str = "live"


class Following:
    """A followed model: its follower, and how the versions it chooses are swapped in.

    `first` is the version to serve at start (already pulled and verified); the registry loads
    it like any target. Once the server is ready, `attach` hands over the registry and its event
    loop; from then on `apply` (the follower's callback, on the follower's thread) builds each new
    version on that thread and swaps it in on the loop.
    """

    def __init__(self, spec: FollowSpec, store: Store, source: LocalSource) -> None:
        self.spec = spec
        self.store = store
        self.follower = Follower(
            source, spec.selection, self.apply, canary=spec.canary, interval=spec.interval
        )
        self.first = self.follower.start_version()
        self.manifests: dict[str, Manifest] = {PRIMARY: self.first}
        self.registry: ModelRegistry | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return self.spec.selection.name

    def attach(self, registry: ModelRegistry, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the loop once the first version is live: swaps can start."""
        self.registry, self.loop = registry, loop
        slot = registry.slot(self.name)
        if self.spec.canary is not None:
            slot.split = CanarySplit(self.spec.canary.percent)
        self.follower.live[PRIMARY] = slot.version

    def apply(self, role: str, manifest: Manifest) -> None:
        """The follower's callback: build `manifest` and make it `role`'s live version."""
        registry, loop = self.registry, self.loop
        if registry is None or loop is None:
            raise RuntimeError("the server is not running yet")
        slot = registry.slot(self.name)

        def build(m: Manifest = manifest) -> LoadedModel:
            return build_version(self.store, m, slot.served, slot.endpoints)

        old = self.manifests.get(role)
        if self.spec.swap == "drain" and role == PRIMARY and old is not None:
            print(
                f"torchshelf: draining {self.name}:{old.version} before loading "
                f"{manifest.version}; requests queue meanwhile (up to their timeout)",
                file=sys.stderr,
                flush=True,
            )
            drain = registry.drain_swap(self.name, build, lambda: build(old))
            asyncio.run_coroutine_threadsafe(drain, loop).result()
        else:
            new = build()  # on this thread, beside the old version

            async def swap() -> None:
                registry.swap(self.name, new, canary=role == CANARY)

            asyncio.run_coroutine_threadsafe(swap(), loop).result()
        self.manifests[role] = manifest

    def status(self) -> dict[str, Any]:
        """The /readyz view: the live version, and each selection's state."""
        registry = self.registry
        version = registry.slot(self.name).version if registry is not None else None
        return {"model": self.name, "version": version, **self.follower.status()}


def prepare_following(spec: FollowSpec, device: str | None) -> tuple[Served, Following]:
    """Evaluate the selection (pulling from the remote when asked) and resolve what to serve.

    Everything that can fail before the server binds fails here: no match, a failed pull or
    verify, a bad remote, a bad device.
    """
    from ..lifecycle import default_store
    from ..remote import open_remote
    from .target import resolve_targets

    if spec.swap not in SWAP_MODES:
        raise UsageError(f"--swap must be one of {', '.join(SWAP_MODES)}; got {spec.swap!r}")
    store = default_store()
    source = (
        RemoteSource(open_remote(spec.remote or None), store)
        if spec.remote is not None
        else LocalSource(store)
    )
    following = Following(spec, store, source)
    first = following.first
    return resolve_targets([f"{first.name}:{first.version}"], device)[0], following


def serve_label(
    spec: FollowSpec,
    options: ServeOptions,
    *,
    device: str | None = None,
    on_resolved: Callable[[list[Served]], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    protocols: Sequence[HandlerFactory] = (),
) -> int:
    """`shelf serve NAME --label ...`: serve the selection's version and follow it until stopped."""
    from .registry import ModelRegistry
    from .server import run_server

    served, following = prepare_following(spec, device)
    if on_resolved is not None:
        on_resolved([served])
    registry = ModelRegistry([served], options)
    follower = following.follower

    def ready() -> None:
        following.attach(registry, asyncio.get_running_loop())
        if spec.watch:
            follower.start()
        if spec.canary is not None and spec.watch:
            follower.wake()  # the canary loads at once, not one interval later
        elif spec.canary is not None:
            follower.start(once=True)
        if on_ready is not None:
            on_ready()

    def setup(app: ServeApp) -> None:
        app.ready_details = following.status
        app.metrics.registry.register(FollowCollector(following))

    restore = follower.install_sighup() if spec.watch else (lambda: None)
    try:
        return run_server(registry, options, on_ready=ready, protocols=protocols, setup=setup)
    finally:
        follower.stop()
        restore()


class FollowCollector:
    """`torchshelf_model_swaps_total{model,result}` (model_info comes from the registry)."""

    def __init__(self, following: Following) -> None:
        self.following = following

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        swaps = CounterMetricFamily(
            "torchshelf_model_swaps",
            "Version swaps by result: ok, or the stage that failed (pull, verify, load, warmup).",
            labels=["model", "result"],
        )
        for (model, result), n in sorted(self.following.follower.counts.snapshot().items()):
            swaps.add_metric([model, result], n)
        yield swaps
