"""Bodies of the processes that the concurrency and crash tests start (forked, so torch is warm).

Each worker appends one JSON line per event to its own log, so a killed worker loses nothing
that it finished recording.
"""

from __future__ import annotations

import json
import os
import random
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import zoo

import torchshelf


def _log(path: Path, **event: Any) -> None:
    event.setdefault("t", time.time())
    with open(path, "a") as fh:
        fh.write(json.dumps(event) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def marked_model(worker: int, n: int) -> torch.nn.Module:
    """An MLP whose `scale` buffer encodes who saved it: a reader can tell a mixed-up version."""
    model = zoo.MLP()
    model.scale.fill_(worker * 1000 + n)
    return model


def _wait(go: Path) -> None:
    while not go.exists():
        time.sleep(0.005)


def saver(store: Path, worker: int, count: int, log: Path, go: Path) -> None:
    _wait(go)
    for n in range(count):
        tag = torchshelf.save_model(
            "conc",
            marked_model(worker, n),
            store=store,
            labels={"worker": str(worker), "n": str(n)},
        )
        _log(log, tag=str(tag))


def _check_loaded(model: torch.nn.Module, ref: torchshelf.Model) -> None:
    expected = int(ref.labels["worker"]) * 1000 + int(ref.labels["n"])
    if model.scale.item() != expected:
        raise AssertionError(f"{ref.tag} holds {model.scale.item()}, its labels say {expected}")


def reader(store: Path, log: Path, go: Path, stop: Path) -> None:
    """list / get / load_model (latest and older versions) until told to stop."""
    _wait(go)
    rng = random.Random(os.getpid())
    last_latest = ""
    while not stop.exists():
        op = rng.choice(["list", "get", "latest", "older"])
        started = time.time()
        try:
            if op == "list":
                for ref in torchshelf.models.list("conc", store=store):
                    assert ref.labels["worker"] and ref.info.size > 0
            elif op == "get":
                ref = torchshelf.get("conc", store=store)
                if ref.manifest.creation_time < last_latest:
                    raise AssertionError(f"latest went back in time: {ref.tag}")
                last_latest = ref.manifest.creation_time
            elif op == "latest":
                ref = torchshelf.get("conc", store=store)
                _check_loaded(ref.load_model(), ref)
            else:
                refs = torchshelf.models.list("conc", store=store)
                if refs:
                    ref = rng.choice(refs)
                    _check_loaded(torchshelf.load_model(ref.tag, store=store), ref)
            _log(log, op=op, result="ok")
        except torchshelf.NotFound as exc:
            _log(log, op=op, result="notfound", started=started, error=str(exc))
        except Exception as exc:
            _log(
                log,
                op=op,
                result="error",
                error=f"{type(exc).__name__}: {exc}",
                trace=traceback.format_exc(),
            )


def _listed(store: Path) -> list[Any]:
    """The versions of `conc` so far; none before the first save commits (the Python API's
    `models.list(name)` raises NotFound for a name with no version, as BentoML's does)."""
    try:
        return torchshelf.models.list("conc", store=store)
    except torchshelf.NotFound:
        return []


def labeler(store: Path, log: Path, go: Path, stop: Path) -> None:
    """Relabel random versions (a label change rewrites the manifest) while others load them."""
    _wait(go)
    rng = random.Random(os.getpid())
    n = 0
    while not stop.exists():
        refs = _listed(store)
        if not refs:
            time.sleep(0.01)
            continue
        n += 1
        try:
            torchshelf.models.set_labels(
                rng.choice(refs[:10]).tag, {"touched": str(n)}, store=store
            )
            _log(log, result="ok")
        except torchshelf.NotFound:
            _log(log, result="notfound")
        except Exception as exc:
            _log(log, result="error", error=f"{type(exc).__name__}: {exc}")


def deleter(store: Path, log: Path, go: Path, stop: Path, keep_newest: int, most: int) -> None:
    """Delete random older versions (never the newest `keep_newest`), at most `most` of them."""
    _wait(go)
    rng = random.Random(os.getpid())
    deleted = 0
    while not stop.exists() and deleted < most:
        time.sleep(rng.uniform(0.01, 0.05))
        refs = _listed(store)[keep_newest:]
        if not refs:
            continue
        victim = rng.choice(refs).tag
        try:
            gone = torchshelf.models.delete(victim, store=store)
            for tag in gone:
                _log(log, deleted=str(tag))
            deleted += len(gone)
        except torchshelf.NotFound:
            _log(log, result="notfound")
        except Exception as exc:
            _log(log, result="error", error=f"{type(exc).__name__}: {exc}")


# --- crash trials: each body runs in a forked child that the test SIGKILLs at a random moment ---


def save_big(store: Path, model: torch.nn.Module, ready: Path) -> None:
    ready.touch()
    torchshelf.save_model("big", model, store=store)
    os._exit(0)


def import_big(store: Path, archive: Path, ready: Path) -> None:
    ready.touch()
    torchshelf.models.import_model(archive, store=store)
    os._exit(0)


def delete_big(store: Path, tag: str, ready: Path) -> None:
    ready.touch()
    torchshelf.models.delete(tag, store=store)
    os._exit(0)
