"""Serving a label: which version a selection names, following it, and what failed.

`shelf serve NAME --label stage=production --watch` serves the newest version of NAME whose
labels match the selectors (the syntax of `shelf list --label`). This module owns everything
about that except the swap itself (`swap.py`) and HTTP:

- `Selection` / `Canary` and their parsing (`--label`, `--canary 'SELECTOR:PERCENT'`);
- `LocalSource` / `RemoteSource`: where a selection is evaluated, and how the chosen version is
  made ready in the local store (a remote version is pulled, hashed as it arrives, first);
- `FailedVersions`: a version that failed to pull, verify, load or warm up is remembered and not
  tried again until the selection names another version;
- `CanarySplit`: which requests go to the canary version;
- `Follower`: one evaluation (`check`), repeated every interval on a thread, and at once on SIGHUP.

The follower never serves anything itself: it calls `apply(role, manifest)`, which loads, warms
up and swaps (or raises `VersionFailed`, leaving the live version serving).
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, ShelfError, UsageError
from ..selectors import parse_selectors
from ..tag import validate_name

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..records import ModelStore
    from ..remote import Remote
    from ..store import Store

__all__ = [
    "PRIMARY",
    "CANARY",
    "STAGES",
    "SWAP_MODES",
    "Selection",
    "Canary",
    "parse_selection",
    "parse_canary",
    "CanarySplit",
    "VersionFailed",
    "FailedVersions",
    "SwapCounts",
    "LocalSource",
    "RemoteSource",
    "Follower",
]

PRIMARY = "primary"
CANARY = "canary"
SWAP_MODES = ("live", "drain")
# The stages a new version passes before it goes live; a failure names one of them, and is
# counted as `torchshelf_model_swaps_total{result="<stage>_failed"}` (`ok` for a swap).
STAGES = ("pull", "verify", "load", "warmup")
DEFAULT_INTERVAL = 5.0


@dataclass(frozen=True)
class Selection:
    """Model NAME and the label selectors (ANDed) that choose its served version."""

    name: str
    selectors: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name} [{', '.join(self.selectors)}]"


def parse_selection(name: str, labels: Sequence[str]) -> Selection:
    """`NAME` + `--label` values -> a checked `Selection` (bad syntax is a `UsageError`).

    Example:
        >>> parse_selection("classifier", ["stage=production"])
        Selection(name='classifier', selectors=('stage=production',))
    """
    if not labels:
        raise UsageError("serving a label needs at least one --label K=V selector")
    parse_selectors(list(labels))  # raises on bad syntax before anything loads
    return Selection(validate_name(name.strip().lower()), tuple(s.strip() for s in labels))


@dataclass(frozen=True)
class Canary:
    """A second selection that gets `percent` of the requests (`--canary 'SELECTOR:PERCENT'`)."""

    selection: Selection
    percent: float


def _split_selectors(text: str) -> list[str]:
    """`a=b,c in (x,y)` -> `["a=b", "c in (x,y)"]`: commas outside parentheses separate."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_PERCENT_RE = re.compile(r"^(.*):\s*([0-9]+(?:\.[0-9]+)?)\s*%?\s*$", re.S)


def parse_canary(name: str, text: str) -> Canary:
    """`'stage=candidate:10'` -> 10 % of requests to the newest version matching `stage=candidate`.

    Several selectors are separated by commas (`'stage=candidate,team=nlp:5'`).
    """
    m = _PERCENT_RE.match(text)
    if not m or not m.group(1).strip():
        raise UsageError(
            f"invalid --canary {text!r}: write it as 'SELECTOR:PERCENT', e.g. 'stage=candidate:10'"
        )
    percent = float(m.group(2))
    if not 0 < percent < 100:
        raise UsageError(f"--canary percent must be between 0 and 100 (exclusive); got {percent:g}")
    return Canary(parse_selection(name, _split_selectors(m.group(1))), percent)


class CanarySplit:
    """Sends `percent` of requests to the canary, spread evenly (no randomness, so no streaks).

    An accumulator adds `percent` per request and takes a canary request each time it crosses
    100: with 10 %, exactly one request in every ten goes to the canary.
    """

    def __init__(self, percent: float) -> None:
        self.percent = percent
        self._acc = 0.0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """True when this request goes to the canary."""
        with self._lock:
            self._acc += self.percent
            if self._acc >= 100.0:
                self._acc -= 100.0
                return True
            return False


class VersionFailed(ShelfError):
    """A version could not go live; `stage` is one of `STAGES`, `tag` the version."""

    def __init__(self, stage: str, tag: str, cause: BaseException | str) -> None:
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{tag} failed to {stage.replace('warmup', 'warm up')}: {reason}")
        self.stage = stage
        self.tag = tag
        self.reason = reason


@dataclass
class FailedVersions:
    """The bad-version memory: role -> (version, reason) of the last version that failed.

    A failed version is not tried again while the selection keeps naming it; once the selection
    names another version the memory of the failed one is dropped (so re-promoting it later,
    say after a fix of the store, tries it again).
    """

    _failed: dict[str, tuple[str, str]] = field(default_factory=dict)

    def record(self, role: str, version: str, reason: str) -> None:
        self._failed[role] = (version, reason)

    def is_failed(self, role: str, version: str) -> bool:
        """Whether `version` failed for `role` and the selection has not changed since."""
        failed = self._failed.get(role)
        if failed is None:
            return False
        if failed[0] == version:
            return True
        del self._failed[role]  # the selection moved on: forget the bad one
        return False

    def get(self, role: str) -> tuple[str, str] | None:
        return self._failed.get(role)


class SwapCounts:
    """`torchshelf_model_swaps_total{model,result}`: thread-safe counts read by /metrics."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, model: str, result: str) -> None:
        with self._lock:
            self._counts[(model, result)] = self._counts.get((model, result), 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


def _newest(source: ModelStore, selection: Selection) -> Manifest | None:
    """The manifest of the newest version matching `selection` on `source`, or None.

    The listing is a summary; the manifest is read after it, so a version deleted in between
    is passed over by listing again.
    """
    for _ in range(3):
        found = source.list(selection.name, list(selection.selectors), latest=True)
        if not found:
            return None
        with contextlib.suppress(NotFound):
            return source.read_manifest(found[0].name, found[0].version)
    return None


class LocalSource:
    """Evaluates selections on the local store; a chosen version is verified before loading."""

    remote = False

    def __init__(self, store: Store) -> None:
        self.store = store

    def newest(self, selection: Selection) -> Manifest | None:
        """The newest version matching, through the store's listing (no directory walks here)."""
        return _newest(self.store, selection)

    def fetch(self, manifest: Manifest) -> Manifest:
        """Check the version's files against its manifest (stat-cached, as every load does)."""
        tag = f"{manifest.name}:{manifest.version}"
        try:
            local = self.store.read_manifest(manifest.name, manifest.version)
            self.store.check(local)
        except (ShelfError, OSError) as exc:
            raise VersionFailed("verify", tag, exc) from exc
        return local


class RemoteSource(LocalSource):
    """Evaluates selections on the remote (one listing per check) and pulls the chosen version.

    The pull hashes every byte as it arrives and commits only a complete, matching copy, so a
    version that was tampered with on the remote fails at `pull` and never reaches the store.
    """

    remote = True

    def __init__(self, remote: Remote, store: Store) -> None:
        super().__init__(store)
        self.remote_store = remote

    def newest(self, selection: Selection) -> Manifest | None:
        return _newest(self.remote_store, selection)

    def fetch(self, manifest: Manifest) -> Manifest:
        tag = f"{manifest.name}:{manifest.version}"
        try:
            self.remote_store.pull(self.store, tag)
        except (ShelfError, OSError) as exc:
            raise VersionFailed("pull", tag, exc) from exc
        return super().fetch(manifest)


def warn(message: str) -> None:
    """One line on stderr (the server's log), flushed so a supervisor sees it at once."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    print(f"torchshelf: {message}", file=sys.stderr, flush=True)


Apply = Callable[[str, "Manifest"], None]


class Follower:
    """Keeps the served versions of one model equal to what its selections name.

    `apply(role, manifest)` is called (on the follower's thread) with a version that is in the
    local store and verified; it loads, warms up and swaps it in, or raises `VersionFailed`
    (anything else it raises is treated as a load failure). `live` holds the version serving
    each role. `check()` is one evaluation; `start()` repeats it every `interval` seconds and
    `wake()` (SIGHUP) runs one at once.

    Example:
        >>> f = Follower(LocalSource(store), parse_selection("clf", ["stage=production"]), apply)
        >>> f.check()           # at startup: the version to serve, or NotFound
        >>> f.start(); f.install_sighup()
    """

    def __init__(
        self,
        source: LocalSource,
        selection: Selection,
        apply: Apply,
        *,
        canary: Canary | None = None,
        interval: float = DEFAULT_INTERVAL,
        counts: SwapCounts | None = None,
        log: Callable[[str], None] = info,
        warn: Callable[[str], None] = warn,
    ) -> None:
        if interval <= 0:
            raise UsageError(f"--watch-interval must be positive; got {interval:g}")
        self.source = source
        self.selections = {PRIMARY: selection, **({CANARY: canary.selection} if canary else {})}
        self.canary = canary
        self.apply = apply
        self.interval = interval
        self.counts = counts or SwapCounts()
        self.failed = FailedVersions()
        self.live: dict[str, str] = {}
        self.checks = 0  # evaluations finished; `live_since[role]`: the one that swapped it in
        self.live_since: dict[str, int] = {}
        self._log, self._warn = log, warn
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one check at a time (timer and SIGHUP may overlap)
        self._thread: threading.Thread | None = None
        self._warned: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.selections[PRIMARY].name

    def start_version(self) -> Manifest:
        """The version to serve first: the newest match, fetched and verified, or a clear error."""
        sel = self.selections[PRIMARY]
        manifest = self.source.newest(sel)
        where = " on the remote" if self.source.remote else ""
        if manifest is None:
            raise NotFound(
                f"no version of {sel.name}{where} matches {', '.join(sel.selectors)}; see "
                f"`shelf list {sel.name}{' --remote' if self.source.remote else ''}`"
            )
        return self.source.fetch(manifest)

    def check(self) -> list[str]:
        """Evaluate every selection once and swap what changed; returns what happened, per role."""
        with self._lock:
            try:
                return [r for role in self.selections if (r := self._check_role(role))]
            finally:
                self.checks += 1

    def _check_role(self, role: str) -> str:
        sel = self.selections[role]
        try:
            manifest = self.source.newest(sel)
        except (ShelfError, OSError) as exc:
            self._warn_once(role, f"checking {sel} failed, keeping the current version: {exc}")
            return ""
        if manifest is None:
            self._warn_once(
                role, f"no version matches {sel}; keeping {self.live.get(role, 'nothing')}"
            )
            return ""
        self._warned.pop(role, None)
        version = manifest.version
        if version == self.live.get(role) or self.failed.is_failed(role, version):
            return ""
        return self._swap(role, manifest)

    def _swap(self, role: str, manifest: Manifest) -> str:
        tag = f"{manifest.name}:{manifest.version}"
        old = self.live.get(role)
        started = time.perf_counter()
        self._log(f"{role}: {self.selections[role]} now names {tag}; swapping from {old}")
        try:
            local = self.source.fetch(manifest)
            self.apply(role, local)
        except Exception as exc:
            failure = exc if isinstance(exc, VersionFailed) else VersionFailed("load", tag, exc)
            self.failed.record(role, manifest.version, failure.reason)
            self.counts.add(self.name, f"{failure.stage}_failed")
            self._warn(f"{failure}; {old or 'the current version'} keeps serving {role}")
            return f"{role}:{failure.stage}_failed"
        self.live[role] = manifest.version
        self.live_since[role] = self.checks + 1  # this check's number
        self.counts.add(self.name, "ok")
        self._log(f"{role}: {tag} is live ({time.perf_counter() - started:.2f} s after the check)")
        return f"{role}:ok"

    def _warn_once(self, role: str, message: str) -> None:
        """Warn when a condition starts (or changes), not at every interval."""
        if self._warned.get(role) != message:
            self._warned[role] = message
            self._warn(message)

    # --- the watcher ------------------------------------------------------------------------

    def wake(self) -> None:
        """Check at once (the SIGHUP handler; safe to call from a signal handler)."""
        self._wake.set()

    def start(self, *, once: bool = False) -> None:
        """Check every `interval` seconds on a daemon thread until `stop()` (`once`: check one
        time at once, e.g. to load the canary of a server that does not watch)."""
        if self._thread is not None:
            return
        target = self._check_logged if once else self._run
        self._thread = threading.Thread(target=target, name="torchshelf-follow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._check_logged()

    def _check_logged(self) -> None:
        try:
            self.check()
        except Exception as exc:  # never let the watcher die: the server keeps serving
            self._warn(f"watching {self.selections[PRIMARY]} failed: {exc!r}")

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def install_sighup(self) -> Callable[[], None]:
        """Make SIGHUP run a check at once; returns a function restoring the old handler."""
        if (
            not hasattr(signal, "SIGHUP")
            or threading.current_thread() is not threading.main_thread()
        ):
            return lambda: None
        previous = signal.signal(signal.SIGHUP, lambda signum, frame: self.wake())

        def restore() -> None:
            signal.signal(signal.SIGHUP, previous)

        return restore

    @contextlib.contextmanager
    def watching(self) -> Iterator[Follower]:
        """`start()` + SIGHUP for the duration of a `with` block."""
        restore = self.install_sighup()
        self.start()
        try:
            yield self
        finally:
            self.stop()
            restore()

    def status(self) -> dict[str, Any]:
        """What /readyz shows about the selections: live versions, last failures, checks."""
        out: dict[str, Any] = {"checks": self.checks}
        for role, sel in self.selections.items():
            entry: dict[str, Any] = {
                "selector": list(sel.selectors),
                "version": self.live.get(role),
                "since_check": self.live_since.get(role, 0),
            }
            if failed := self.failed.get(role):
                entry["failed"] = {"version": failed[0], "error": failed[1]}
            if role == CANARY and self.canary is not None:
                entry["percent"] = self.canary.percent
            out[role] = entry
        return out
