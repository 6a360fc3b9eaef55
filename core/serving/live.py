"""The versions a followed model serves (`shelf serve NAME --label ...`): load, warm up, swap.

`LiveModel` holds one `LiveSlot` per role (the primary selection, and the canary when there is
one) and is what the batch queues run: each request is routed to a role when it arrives
(`route`), and `run` computes every request of a batch wholly on the version its role's slot
held when the batch started, returning each result tagged with that version (`Versioned`), so
responses can say which version computed them.

`apply(role, manifest)` is the `Follower`'s callback: it builds a `LoadedVersion` (load, then
warm up, each failure a `VersionFailed` naming its stage) and swaps it in with `swap_live` or
`swap_drain`; the old version is released once its last batch has finished.
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
    SwapCounts,
    VersionFailed,
)
from .swap import LiveSlot, swap_drain, swap_live
from .target import Call, Endpoint, Served, make_runner

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ..manifest import Manifest
    from ..store import Store

__all__ = [
    "FollowCollector",
    "FollowSpec",
    "Following",
    "LiveModel",
    "LoadedVersion",
    "Routed",
    "Versioned",
    "load_version",
    "prepare_following",
]


@dataclass(frozen=True)
class Routed:
    """A queued request and the role (primary or canary) it was routed to on arrival."""

    call: Call
    role: str = PRIMARY


@dataclass(frozen=True)
class Versioned:
    """One request's result and the version that computed it."""

    value: Any
    version: str


@dataclass
class LoadedVersion:
    """One loaded, warmed-up version: the callable of each api and its batch runners."""

    version: str
    device: str
    fns: dict[str, Callable[..., Any]]
    runners: dict[str, Callable[[list[Call]], Sequence[Any]]]
    model: Any = None

    def release(self) -> None:
        """Drop every reference to the module and free its memory (CUDA's cache too).

        Reference counting frees the tensors at once; a full `gc.collect()` (~0.2 s of GIL with
        torch loaded, felt by every request in flight) runs only if a reference cycle kept the
        module alive.
        """
        alive = _weak(self.model)
        self.fns.clear()
        self.runners.clear()
        self.model = None
        if alive() is not None:
            gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _weak(obj: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(obj)
    except TypeError:  # None, or an object without weak references
        return lambda: None


def _api_methods(ref: Any, endpoints: Sequence[Endpoint]) -> dict[str, tuple[str, Endpoint]]:
    """api name -> (model method, the served endpoint with this version's input spec)."""
    from dataclasses import replace

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


def load_version(
    store: Store, manifest: Manifest, endpoints: Sequence[Endpoint], device: str
) -> LoadedVersion:
    """Load `manifest` onto `device` and warm every api up; its apis must be the served ones."""
    from ..model import Model
    from .target import _positional, _warm_up

    tag = f"{manifest.name}:{manifest.version}"
    ref = Model(store, manifest)
    apis = _api_methods(ref, endpoints)
    try:
        model = ref.load_model(device_id=device)
        fns = {}
        for name, (method, _) in apis.items():
            fn = model if method == "__call__" else getattr(model, method, None)
            if fn is None:
                raise AttributeError(f"{tag} has no method {method!r} named in its signatures")
            fns[name] = _positional(fn)
    except Exception as exc:
        raise VersionFailed("load", tag, exc) from exc
    try:
        for name, fn in fns.items():
            _warm_up(fn, apis[name][1], device)
    except Exception as exc:
        LoadedVersion(manifest.version, device, fns, {}, model).release()
        raise VersionFailed("warmup", tag, exc) from exc
    runners = {ep.name: make_runner(ep, fns[ep.name], device) for ep in endpoints}
    return LoadedVersion(manifest.version, device, fns, runners, model)


@dataclass
class LiveModel:
    """The primary (and canary) versions of one followed model, swapped as the follower says."""

    name: str
    store: Store
    endpoints: Sequence[Endpoint]
    device: str
    swap: str = "live"
    canary_percent: float | None = None
    counts: SwapCounts = field(default_factory=SwapCounts)
    wait_s: float = 30.0
    slots: dict[str, LiveSlot[LoadedVersion]] = field(default_factory=dict)
    follower: Follower | None = None

    def __post_init__(self) -> None:
        self.slots = {PRIMARY: LiveSlot(), CANARY: LiveSlot()}
        self._split = CanarySplit(self.canary_percent) if self.canary_percent else None
        self._manifests: dict[str, Manifest] = {}
        self._swap_lock = threading.Lock()

    # --- serving ----------------------------------------------------------------------------

    def route(self) -> str:
        """The role the next request goes to: the canary's share, when a canary is live."""
        split = self._split
        if split is not None and self.slots[CANARY].current() is not None and split.take():
            return CANARY
        return PRIMARY

    def runner(self, api: str) -> Callable[[list[Routed]], list[Versioned]]:
        """The batch function of `api`: each role's requests run on that role's version."""

        def run(payloads: list[Routed]) -> list[Versioned]:
            roles = {p.role for p in payloads}
            if len(roles) == 1:
                return self._run_on(roles.pop(), api, [p.call for p in payloads])
            out: list[Versioned | None] = [None] * len(payloads)
            for role in roles:
                idx = [i for i, p in enumerate(payloads) if p.role == role]
                results = self._run_on(role, api, [payloads[i].call for i in idx])
                for i, res in zip(idx, results, strict=True):
                    out[i] = res
            return out  # type: ignore[return-value]

        return run

    def _run_on(self, role: str, api: str, calls: list[Call]) -> list[Versioned]:
        slot = self.slots[role]
        if role == CANARY and slot.current() is None:
            slot = self.slots[PRIMARY]  # the canary went away after routing
        with slot.use(self.wait_s) as loaded:
            results = loaded.runners[api](calls)
            return [Versioned(r, loaded.version) for r in results]

    def live_versions(self) -> dict[str, str]:
        """role -> the version serving it now (a role being drain-swapped is absent)."""
        return {role: v.version for role, slot in self.slots.items() if (v := slot.current())}

    def call_direct(self, api: str) -> Callable[..., Any]:
        """The live primary callable of a non-batched async api (services only; unused here)."""
        loaded = self.slots[PRIMARY].current()
        if loaded is None:
            raise RuntimeError("no version is live")
        return loaded.fns[api]

    # --- swapping ---------------------------------------------------------------------------

    def apply(self, role: str, manifest: Manifest) -> None:
        """Load, warm up and swap `manifest` in for `role` (the `Follower` callback)."""
        with self._swap_lock:
            slot = self.slots[role]

            def build() -> LoadedVersion:
                return load_version(self.store, manifest, self.endpoints, self.device)

            old = self._manifests.get(role)
            if self.swap == "drain" and slot.current() is not None and old is not None:
                print(
                    f"torchshelf: draining {self.name}:{old.version} before loading "
                    f"{manifest.version}; requests queue meanwhile (up to their timeout)",
                    file=sys.stderr,
                    flush=True,
                )
                swap_drain(
                    slot,
                    build,
                    lambda: load_version(self.store, old, self.endpoints, self.device),
                    LoadedVersion.release,
                )
            else:
                swap_live(slot, build, LoadedVersion.release)
            self._manifests[role] = manifest

    def release(self) -> None:
        """Release every loaded version (server shutdown)."""
        for slot in self.slots.values():
            loaded = slot.hold()
            if loaded is not None:
                loaded.release()
            slot.clear_if_held()


@dataclass(frozen=True)
class FollowSpec:
    """What `shelf serve NAME --label ...` asked for (already parsed and checked)."""

    selection: Selection
    canary: Canary | None = None
    remote: str | None = None  # None: the local store; "" the configured remote; or a URL
    watch: bool = False
    interval: float = DEFAULT_INTERVAL
    swap: str = "live"


@dataclass
class Following:
    """A followed model ready to serve: the first version chosen, nothing loaded yet."""

    spec: FollowSpec
    live: LiveModel
    follower: Follower
    first: Manifest

    def start(self) -> None:
        """Load the first version (a failure fails the server), then evaluate the canary."""
        self.live.apply(PRIMARY, self.first)
        self.follower.live[PRIMARY] = self.first.version
        if self.spec.canary is not None:
            self.follower.check()

    def status(self) -> dict[str, Any]:
        """The /readyz view: the live version and each selection's state."""
        live = self.live.live_versions()
        return {"model": self.live.name, "version": live.get(PRIMARY), **self.follower.status()}


def prepare_following(spec: FollowSpec, device: str | None) -> tuple[Served, Following]:
    """Evaluate the selection (pulling from the remote when asked) and resolve what to serve.

    Everything that can fail before the server binds fails here: no match, a failed pull or
    verify, a bad remote.
    """
    from ..lifecycle import default_store
    from ..remote import open_remote
    from .target import resolve_target

    if spec.swap not in SWAP_MODES:
        raise UsageError(f"--swap must be one of {', '.join(SWAP_MODES)}; got {spec.swap!r}")
    store = default_store()
    source = (
        RemoteSource(open_remote(spec.remote or None), store)
        if spec.remote is not None
        else LocalSource(store)
    )
    live = LiveModel(
        spec.selection.name,
        store,
        [],
        device or "cpu",
        swap=spec.swap,
        canary_percent=spec.canary.percent if spec.canary else None,
    )
    follower = Follower(
        source,
        spec.selection,
        live.apply,
        canary=spec.canary,
        interval=spec.interval,
        counts=live.counts,
    )
    first = follower.start_version()
    served = resolve_target(f"{first.name}:{first.version}", device)
    live.device = served.device
    return served, Following(spec, live, follower, first)


class FollowCollector:
    """`torchshelf_model_info{model,version}` and `torchshelf_model_swaps_total{model,result}`."""

    def __init__(self, following: Following) -> None:
        self.following = following

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        live = self.following.live
        info = GaugeMetricFamily(
            "torchshelf_model_info", "1 for each live model version.", labels=["model", "version"]
        )
        for version in sorted(set(live.live_versions().values())):
            info.add_metric([live.name, version], 1)
        yield info
        swaps = CounterMetricFamily(
            "torchshelf_model_swaps",
            "Version swaps by result: ok, or the stage that failed (pull, verify, load, warmup).",
            labels=["model", "result"],
        )
        for (model, result), n in sorted(live.counts.snapshot().items()):
            swaps.add_metric([model, result], n)
        yield swaps
