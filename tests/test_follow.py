"""Following a label: selections, the bad-version memory, the canary split, the watcher and the
live slot, against a real store in tmp_path (no server; the HTTP side is tests/test_follow_serve.py).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

import torchshelf
from torchshelf.errors import NotFound, UsageError
from torchshelf.manifest import Manifest
from torchshelf.serving.follow import (
    CANARY,
    PRIMARY,
    CanarySplit,
    Follower,
    LocalSource,
    VersionFailed,
    parse_canary,
    parse_selection,
)
from torchshelf.store import Store


def save(store: Store, value: float, **labels: str) -> str:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.zero_()
    return torchshelf.save_model("clf", model, labels=labels, store=store).version


def tamper(store: Store, version: str) -> None:
    """Flip one byte in the version's largest file, keeping its size."""
    m = store.read_manifest("clf", version)
    rel = max(m.files, key=lambda r: m.files[r]["size"])
    path = store.version_dir("clf", version) / rel
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


class Recorder:
    """An `apply` that records what went live and can be told to fail for some versions."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []
        self.fail: dict[str, Exception] = {}

    def __call__(self, role: str, manifest: Manifest) -> None:
        if manifest.version in self.fail:
            raise self.fail[manifest.version]
        self.applied.append((role, manifest.version))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def follower(store: Store, rec: Recorder, **kw: object) -> tuple[Follower, list[str]]:
    warnings: list[str] = []
    f = Follower(
        LocalSource(store),
        parse_selection("clf", ["stage=production"]),
        rec,
        log=lambda _: None,
        warn=warnings.append,
        **kw,  # type: ignore[arg-type]
    )
    return f, warnings


# --- parsing ------------------------------------------------------------------------------------


def test_a_selection_needs_a_valid_name_and_selector_syntax() -> None:
    sel = parse_selection("Clf", ["stage=production", "team in (a,b)"])
    assert sel.name == "clf" and sel.selectors == ("stage=production", "team in (a,b)")
    with pytest.raises(UsageError, match="at least one --label"):
        parse_selection("clf", [])
    with pytest.raises(UsageError, match="invalid label selector"):
        parse_selection("clf", ["=x"])
    with pytest.raises(torchshelf.InvalidName):
        parse_selection("../etc", ["stage=production"])


def test_canary_parses_selector_and_percent() -> None:
    c = parse_canary("clf", "stage=candidate:10")
    assert c.selection.selectors == ("stage=candidate",) and c.percent == 10
    c = parse_canary("clf", "stage=candidate,team in (a,b):2.5%")
    assert c.selection.selectors == ("stage=candidate", "team in (a,b)") and c.percent == 2.5
    for bad in ("stage=candidate", ":10", "stage=candidate:0", "stage=candidate:100", "x:abc"):
        with pytest.raises(UsageError):
            parse_canary("clf", bad)


def test_the_canary_split_takes_its_exact_share_spread_evenly() -> None:
    split = CanarySplit(10)
    picks = [split.take() for _ in range(1000)]
    assert sum(picks) == 100
    assert all(sum(picks[i : i + 10]) == 1 for i in range(0, 1000, 10))
    split = CanarySplit(33.3)
    assert 330 <= sum(split.take() for _ in range(1000)) <= 334


# --- evaluating and following -------------------------------------------------------------------


def test_the_newest_matching_version_is_served_first(store: Store) -> None:
    v1 = save(store, 1, stage="production")
    save(store, 2, stage="staging")
    f, _ = follower(store, Recorder())
    assert f.start_version().version == v1
    with pytest.raises(NotFound, match="no version of clf matches stage=gone"):
        Follower(
            LocalSource(store), parse_selection("clf", ["stage=gone"]), Recorder()
        ).start_version()


def test_a_promotion_swaps_and_a_selection_matching_nothing_keeps_the_version(
    store: Store,
) -> None:
    v1 = save(store, 1, stage="production")
    v2 = save(store, 2)
    rec = Recorder()
    f, warnings = follower(store, rec)
    assert f.check() == ["primary:ok"] and f.live[PRIMARY] == v1
    assert f.check() == []  # nothing changed: nothing loads
    store.set_labels(f"clf:{v2}", {"stage": "production"})
    assert f.check() == ["primary:ok"] and f.live[PRIMARY] == v2
    store.set_labels(f"clf:{v1}", {}, remove=["stage"])
    store.set_labels(f"clf:{v2}", {}, remove=["stage"])
    assert f.check() == [] and f.check() == []
    assert f.live[PRIMARY] == v2 and rec.applied == [(PRIMARY, v1), (PRIMARY, v2)]
    assert len(warnings) == 1 and "no version matches" in warnings[0] and v2 in warnings[0]


def test_a_tampered_version_never_goes_live_and_is_not_retried(store: Store) -> None:
    v1 = save(store, 1, stage="production")
    rec = Recorder()
    f, warnings = follower(store, rec)
    f.check()
    v2 = save(store, 2, stage="production")
    tamper(store, v2)
    assert f.check() == ["primary:verify_failed"]
    assert f.live[PRIMARY] == v1 and rec.applied == [(PRIMARY, v1)]
    assert f.check() == []  # remembered: not verified again while the selection names it
    assert f.counts.snapshot() == {("clf", "ok"): 1, ("clf", "verify_failed"): 1}
    assert any(v2 in w and "verify" in w for w in warnings)
    assert f.status()[PRIMARY]["failed"]["version"] == v2
    v3 = save(store, 3, stage="production")  # the selection moves on: the next one is tried
    assert f.check() == ["primary:ok"] and f.live[PRIMARY] == v3


def test_load_and_warm_up_failures_keep_the_old_version_and_are_counted(store: Store) -> None:
    save(store, 1, stage="production")
    rec = Recorder()
    f, _ = follower(store, rec)
    f.check()
    v2 = save(store, 2, stage="production")
    rec.fail[v2] = ImportError("No module named 'gone'")
    assert f.check() == ["primary:load_failed"]
    v3 = save(store, 3, stage="production")
    rec.fail[v3] = VersionFailed("warmup", f"clf:{v3}", "shape mismatch")
    assert f.check() == ["primary:warmup_failed"]
    assert f.check() == []
    counts = f.counts.snapshot()
    assert counts[("clf", "load_failed")] == 1 and counts[("clf", "warmup_failed")] == 1


def test_a_canary_follows_its_own_selection(store: Store) -> None:
    v1 = save(store, 1, stage="production")
    rec = Recorder()
    f, warnings = follower(store, rec, canary=parse_canary("clf", "stage=candidate:10"))
    assert f.check() == ["primary:ok"]
    assert any("stage=candidate" in w for w in warnings)
    v2 = save(store, 2, stage="candidate")
    assert f.check() == ["canary:ok"]
    assert f.live == {PRIMARY: v1, CANARY: v2}
    assert f.status()[CANARY] == {
        "selector": ["stage=candidate"],
        "version": v2,
        "since_check": 2,
        "percent": 10,
    }


def test_the_watcher_checks_every_interval_and_at_once_when_woken(store: Store) -> None:
    save(store, 1, stage="production")
    rec = Recorder()
    f, _ = follower(store, rec, interval=0.05)
    f.check()
    with f.watching():
        v2 = save(store, 2, stage="production")
        deadline = time.monotonic() + 10
        while f.live[PRIMARY] != v2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert f.live[PRIMARY] == v2
    slow, _ = follower(store, Recorder(), interval=3600)
    slow.start()
    try:
        slow.wake()
        deadline = time.monotonic() + 10
        while slow.checks == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.checks == 1
    finally:
        slow.stop()


def test_sighup_runs_a_check_at_once(store: Store) -> None:
    save(store, 1, stage="production")
    f, _ = follower(store, Recorder(), interval=3600)
    with f.watching():
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while f.checks == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert f.checks == 1 and f.live[PRIMARY]
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored


# --- swapping in the registry slot (no HTTP: the calls every protocol makes) ----------------------

SIG = {"__call__": {"batchable": True, "input_spec": {"shape": [-1, 2], "dtype": "float32"}}}


def save_served(store: Store, value: float, **labels: str) -> str:
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return torchshelf.save_model("clf", model, labels=labels, signatures=SIG, store=store).version


async def _infer(registry: object, n: int) -> list[tuple[str, float]]:
    """`n` concurrent requests of [[1, 1]]: (version, first output) of each."""
    import asyncio

    async def one() -> tuple[str, float]:
        res = await registry.infer("clf", "predict", {"inputs": torch.ones(1, 2)}, 1)  # type: ignore[attr-defined]
        return res.version, float(res.value[0, 0])

    return list(await asyncio.gather(*(one() for _ in range(n))))


def _registry(store: Store, version: str) -> tuple[object, object]:
    from torchshelf.serving.launch import resolve_targets
    from torchshelf.serving.options import ServeOptions
    from torchshelf.serving.registry import ModelRegistry

    served = resolve_targets([f"clf:{version}"])[0]
    return served, ModelRegistry([served], ServeOptions())


def test_a_drain_swap_holds_requests_then_answers_them_on_the_new_version(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from torchshelf.serving.live import build_version

    monkeypatch.setenv("TORCHSHELF_HOME", str(store.root))
    v1, v2 = save_served(store, 1), save_served(store, 2)
    served, registry = _registry(store, v1)
    slot_of = registry.slot  # type: ignore[attr-defined]

    async def main() -> tuple[list[tuple[str, float]], list[tuple[str, float]], str]:
        await registry.start()  # type: ignore[attr-defined]
        slot = slot_of("clf")

        def build(version: str) -> object:
            return build_version(store, store.read_manifest("clf", version), served, slot.endpoints)

        drain = asyncio.ensure_future(
            registry.drain_swap("clf", lambda: build(v2), lambda: build(v1))  # type: ignore[attr-defined]
        )
        during = asyncio.ensure_future(_infer(registry, 20))
        await drain
        answers = await during

        def boom() -> object:
            raise RuntimeError("warm-up failed")

        failing = registry.drain_swap("clf", boom, lambda: build(v1))  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError):
            await asyncio.gather(failing, after := asyncio.ensure_future(_infer(registry, 5)))
        rest = await after
        version = slot.version
        registry.close()  # type: ignore[attr-defined]
        return answers, rest, version

    answers, rest, version = asyncio.run(main())
    assert all((v, out) in ((v1, 2.0), (v2, 4.0)) for v, out in answers)  # none failed
    assert answers[-1] == (v2, 4.0)
    assert version == v1 and rest == [(v1, 2.0)] * 5  # the failed build: the old one again


def test_a_canary_batch_runs_each_request_wholly_on_its_version(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from torchshelf.serving.live import build_version

    monkeypatch.setenv("TORCHSHELF_HOME", str(store.root))
    v1, v2 = save_served(store, 1), save_served(store, 3)
    served, registry = _registry(store, v1)

    async def main() -> list[tuple[str, float]]:
        await registry.start()  # type: ignore[attr-defined]
        slot = registry.slot("clf")  # type: ignore[attr-defined]
        manifest = store.read_manifest("clf", v2)
        new = build_version(store, manifest, served, slot.endpoints)
        registry.swap("clf", new, canary=True)  # type: ignore[attr-defined]
        slot.split = CanarySplit(50)
        answers = await _infer(registry, 40)
        registry.close()  # type: ignore[attr-defined]
        return answers

    answers = asyncio.run(main())
    assert sorted(set(answers)) == sorted({(v1, 2.0), (v2, 6.0)})
    assert sum(v == v2 for v, _ in answers) == 20


def test_the_command_line_refuses_what_cannot_work(store: Store) -> None:
    from conftest import run_shelf

    save(store, 1, stage="production")
    bad = run_shelf("serve", "clf", "--watch", "--canary", "stage=c:10", store=store.root)
    assert bad.returncode == 2 and "--watch, --canary need --label" in bad.stderr
    tag = run_shelf("serve", "clf:latest", "--label", "stage=production", store=store.root)
    assert tag.returncode == 2 and "give one model NAME" in tag.stderr
    none = run_shelf("serve", "clf", "--label", "stage=gone", store=store.root)
    assert none.returncode == 1 and "no version of clf matches stage=gone" in none.stderr
    pct = run_shelf(
        "serve", "clf", "--label", "stage=production", "--canary", "x", store=store.root
    )
    assert pct.returncode == 2 and "SELECTOR:PERCENT" in pct.stderr
