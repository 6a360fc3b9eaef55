"""The live version of a served model, and replacing it while requests run (`--swap live|drain`).

A `LiveSlot` holds one value (a loaded model version). Every batch takes the slot's current
value for its whole run through `use()`, so a batch is computed by exactly one version and
carries that version's name back to its callers. `replace(new)` makes every batch that starts
afterwards take `new`; batches already running keep the old value, and `wait_idle(old)` returns
once the last of them has finished, after which the old version can be released.

Two ways to swap, both leaving the old version serving when the new one fails:
- `swap_live`: build (load, verify, warm up) the new version beside the old one, replace, wait
  for the old one's batches, release it. Needs memory for both versions at once.
- `swap_drain`: for models too big to hold twice. New batches wait (requests queue; nothing is
  refused), running ones finish, the old version is released, the new one is built, batches
  resume on it. If the new one fails, the old one is built again and serving resumes on it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["LiveSlot", "SlotUnavailable", "swap_live", "swap_drain"]

T = TypeVar("T")


class SlotUnavailable(Exception):
    """No version became available within the wait (the slot is empty or a drain swap hangs)."""


class LiveSlot(Generic[T]):
    """One replaceable live value with per-value in-flight counts.

    Example:
        >>> slot = LiveSlot(v1)
        >>> with slot.use() as model: model(x)     # in a batch worker
        >>> old = slot.replace(v2); slot.wait_idle(old); release(old)
    """

    def __init__(self, value: T | None = None) -> None:
        self._value = value
        self._held = False
        self._inflight: dict[int, int] = {}
        self._cond = threading.Condition()

    def current(self) -> T | None:
        """The value new batches take now (None while empty or held for a drain swap)."""
        return None if self._held else self._value

    @contextlib.contextmanager
    def use(self, timeout: float | None = None) -> Iterator[T]:
        """Take the live value for one batch; waits (up to `timeout`) while a drain swap runs."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._value is not None and not self._held, timeout):
                raise SlotUnavailable("no model version is live yet; retry shortly")
            value = self._value
            assert value is not None
            key = id(value)
            self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            yield value
        finally:
            with self._cond:
                left = self._inflight[key] - 1
                if left:
                    self._inflight[key] = left
                else:
                    del self._inflight[key]
                    self._cond.notify_all()

    def in_flight(self, value: T) -> int:
        """How many batches are running on `value` right now."""
        with self._cond:
            return self._inflight.get(id(value), 0)

    def replace(self, new: T) -> T | None:
        """Make `new` the live value for every batch from now on; returns the previous one."""
        with self._cond:
            old, self._value, self._held = self._value, new, False
            self._cond.notify_all()
            return old

    def hold(self) -> T | None:
        """Stop handing out the value (new batches wait in `use`); returns it (drain swaps)."""
        with self._cond:
            self._held = True
            return self._value

    def clear_if_held(self) -> None:
        """End a hold that no `replace` ended: the slot becomes empty (`use` times out)."""
        with self._cond:
            if self._held:
                self._value, self._held = None, False
                self._cond.notify_all()

    def wait_idle(self, value: T, timeout: float | None = None) -> bool:
        """Wait until no batch runs on `value`; False if `timeout` passed first."""
        key = id(value)
        with self._cond:
            return self._cond.wait_for(lambda: key not in self._inflight, timeout)


def swap_live(slot: LiveSlot[T], build: Callable[[], T], release: Callable[[T], None]) -> T:
    """Build the new value beside the old, switch, wait out the old one's batches, release it.

    If `build` raises, nothing changed: the old value keeps serving and the error propagates.
    """
    new = build()
    old = slot.replace(new)
    if old is not None and old is not new:
        slot.wait_idle(old)
        release(old)
    return new


def swap_drain(
    slot: LiveSlot[T],
    build: Callable[[], T],
    rebuild_old: Callable[[], T],
    release: Callable[[T], None],
) -> T:
    """Hold new batches, wait for running ones, release the old value, then build the new one.

    Requests queue while this runs (`use` waits). If `build` raises, the old version is rebuilt
    with `rebuild_old` and serving resumes on it before the error propagates.
    """
    old = slot.hold()
    try:
        if old is not None:
            slot.wait_idle(old)
            release(old)
        try:
            new = build()
        except BaseException:
            if old is not None:
                slot.replace(rebuild_old())
            raise
        slot.replace(new)
        return new
    finally:
        slot.clear_if_held()  # rebuild_old failed too: the released value must not be used
