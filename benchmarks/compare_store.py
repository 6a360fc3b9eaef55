"""Store comparison: torchshelf vs raw safetensors, torch.save/torch.load and BentoML, in one run.

    python benchmarks/compare_store.py [--size-mib 1024] [--repeats 3] [--versions 1000 10000] [--json OUT]

* save and load (warm page cache, and first touch in a fresh process) of the same float32 MLP;
  every load is followed by one read of every weight (a load that only mmaps is not a load);
* `shelf list` (and `--latest`) at 1,000 and 10,000 versions beside `python -c pass` and
  `bentoml models list` (1,000 versions), as whole processes taking turns in one run;
* `shelf get TAG --output json` vs `bentoml models get TAG`, as whole processes.

Each operation runs in its own process (store_worker.py); BentoML runs in the venv made by
benchmarks/peers/setup. Medians of --repeats; ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "store_worker.py"


def peers_python(name: str) -> Path | None:
    explicit = os.environ.get("TORCHSHELF_PEERS_DIR")
    base = (
        Path(explicit).expanduser()
        if explicit
        else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchshelf-peers"
    )
    py = base / name / "bin" / "python"
    return py if py.exists() else None


def worker(
    python: str | Path, method: str, action: str, work: Path, size_mib: int, repeats: int
) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(python),
            str(WORKER),
            method,
            action,
            str(work),
            "--size-mib",
            str(size_mib),
            "--repeats",
            str(repeats),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{method} {action} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def drop_caches() -> bool:
    """Drop the page cache for a true cold read, where permitted (root on a VM); else False."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def bench_io(
    size_mib: int, repeats: int, work: Path, save_rounds: int | None = None
) -> dict[str, Any]:
    methods = {"torchshelf": sys.executable, "safetensors": sys.executable, "torch": sys.executable}
    bentoml_py = peers_python("bentoml")
    if bentoml_py is not None:
        methods["bentoml"] = bentoml_py
    # Saves go round-robin, one per process per method, and each round starts one method later:
    # on this VM a save's write throughput depends on what was written just before (write-back,
    # what looks like a burst allowance on the virtual disk), so a fixed order would always hand
    # the same method the disk right after BentoML's unsynced gigabyte.
    saves: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for rnd in range(save_rounds or repeats):
        for method in names[rnd % len(names) :] + names[: rnd % len(names)]:
            saves[method].append(
                worker(methods[method], method, "save", work / method, size_mib, 1)["median"]
            )
    results: dict[str, Any] = {}
    for method, python in methods.items():
        mwork = work / method
        save = {"median": statistics.median(saves[method]), "times": saves[method]}
        warm = worker(python, method, "load", mwork, size_mib, repeats)
        firsts = [
            worker(python, method, "first", mwork, size_mib, 1)["median"] for _ in range(repeats)
        ]
        cold = None
        if drop_caches():
            cold = worker(python, method, "first", mwork, size_mib, 1)["median"]
        results[method] = {
            "save": save["median"],
            "save_times": save["times"],
            "load_warm": warm["median"],
            "load_first": statistics.median(firsts),
            "load_cold": cold,
        }
        shutil.rmtree(mwork, ignore_errors=True)
    return results


def _once(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def time_cmd(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    """Median wall time of `repeats` runs of one whole process (no warm-up run)."""
    return statistics.median(_once(cmd, env) for _ in range(repeats))


def time_round_robin(
    cmds: dict[str, tuple[list[str], dict[str, str]]], repeats: int
) -> dict[str, float]:
    """Median wall time of each whole process, run in turns (A B C A B C ...) so that load from
    the rest of the machine falls on every command alike; one untimed warm-up turn first."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for turn in range(repeats + 1):
        for key, (cmd, env) in cmds.items():
            took = _once(cmd, env)
            if turn:
                times[key].append(took)
    return {k: statistics.median(v) for k, v in times.items()}


_POPULATE_TS = """
import sys, torch, torchshelf
store = torchshelf.Store(sys.argv[1]); m = torch.nn.Linear(4, 2)
for i in range(int(sys.argv[2])):
    tag = torchshelf.save_model("model-%d" % (i % 10), m, labels={"stage": "production" if i % 3 == 0 else "dev"}, store=store)
print(tag)
"""
_POPULATE_BENTO = """
import os, sys
os.environ["BENTOML_HOME"] = sys.argv[1]
import bentoml, torch
m = torch.nn.Linear(4, 2)
for i in range(int(sys.argv[2])):
    tag = bentoml.pytorch.save_model("model-%d" % (i % 10), m, labels={"stage": "production" if i % 3 == 0 else "dev"})
print(getattr(tag, "tag", tag))
"""


def _populate(python: str | Path, script: str, home: Path, versions: int) -> str:
    out = subprocess.run(
        [str(python), "-c", script, str(home), str(versions)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


_COMPILE = """
import compileall, os, torchshelf, torchshelf.cli
dirs = {os.path.dirname(torchshelf.__file__), os.path.dirname(torchshelf.cli.__file__)}
print(all(compileall.compile_dir(d, quiet=1) for d in sorted(dirs)))
"""


def compile_bytecode() -> bool:
    """Write torchshelf's `.pyc` files first, as `pip install` of a wheel does.

    With an editable install and PYTHONDONTWRITEBYTECODE=1 (set on the machine these figures
    come from), every `shelf` start would otherwise compile its modules from source again:
    about 20 ms that no installed copy pays. BentoML's venv was pip-installed, so has them.
    """
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() == "True"


def bench_cli(sizes: list[int], repeats: int, work: Path) -> dict[str, Any]:
    """`shelf list`, `shelf list --latest` and `shelf get` at each store size, `bentoml models
    list/get` at the first size, and `python -c pass`, all in one round-robin so the figures
    share the machine's load. Also `shelf list` right after its index was deleted (rebuild)."""
    shelf = [sys.executable, "-m", "torchshelf"]
    cmds: dict[str, tuple[list[str], dict[str, str]]] = {
        "python": ([sys.executable, "-c", "pass"], dict(os.environ))
    }
    homes = {}
    for n in sizes:
        home = work / f"ts-cli-{n}"
        tag = _populate(sys.executable, _POPULATE_TS, home, n)
        env = {**os.environ, "TORCHSHELF_HOME": str(home)}
        homes[n] = home
        cmds[f"shelf_list@{n}"] = ([*shelf, "list"], env)
        cmds[f"shelf_latest@{n}"] = ([*shelf, "list", "--latest"], env)
        cmds[f"shelf_get@{n}"] = ([*shelf, "get", tag, "--output", "json"], env)
        # every listed version's whole record: reads each manifest (the index holds summaries)
        cmds[f"shelf_json@{n}"] = ([*shelf, "list", "--output", "json"], env)
    bentoml_py = peers_python("bentoml")
    if bentoml_py is not None:
        bhome = work / "bento-cli"
        btag = _populate(bentoml_py, _POPULATE_BENTO, bhome, sizes[0])
        benv = {**os.environ, "BENTOML_HOME": str(bhome), "BENTOML_DO_NOT_TRACK": "true"}
        bentoml_cli = [str(bentoml_py.parent / "bentoml")]
        cmds["bentoml_list"] = ([*bentoml_cli, "models", "list"], benv)
        cmds["bentoml_get"] = ([*bentoml_cli, "models", "get", btag], benv)
    load_before = os.getloadavg()
    res: dict[str, Any] = {"sizes": sizes, "versions": sizes[0], "repeats": repeats}
    res["bytecode_compiled"] = compile_bytecode()
    res.update(time_round_robin(cmds, repeats))
    for n in sizes:  # the cold path: every manifest read once, the index written again
        times = []
        for _ in range(max(3, repeats // 3)):
            shutil.rmtree(homes[n] / ".index", ignore_errors=True)
            times.append(_once([*shelf, "list"], cmds[f"shelf_list@{n}"][1]))
        res[f"shelf_list_rebuild@{n}"] = statistics.median(times)
    res["load_avg"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    # the keys the single-size report used (run.py's targets read them)
    res["shelf_list"], res["shelf_get"] = (
        res[f"shelf_list@{sizes[0]}"],
        res[f"shelf_get@{sizes[0]}"],
    )
    return res


def render(io: dict[str, Any] | None, cli: dict[str, Any] | None) -> str:
    """Markdown tables of the figures and the ratios that the targets are stated in."""
    lines: list[str] = []
    if io:
        base = io["safetensors"]
        lines += [
            "| method | save s | load warm s | load first touch s | load cold s |",
            "|---|---|---|---|---|",
        ]
        for name, r in io.items():
            cold = f"{r['load_cold']:.3f}" if r["load_cold"] is not None else "n/a"
            lines.append(
                f"| {name} | {r['save']:.3f} | {r['load_warm']:.3f} | {r['load_first']:.3f} | {cold} |"
            )
        ts = io["torchshelf"]
        lines += [
            "",
            "| ratio | value | target |",
            "|---|---|---|",
            f"| torchshelf save / safetensors save+fsync | {ts['save'] / base['save']:.2f}x | <= 1.25x |",
            f"| torchshelf load / safetensors load (warm) | {ts['load_warm'] / base['load_warm']:.2f}x | <= 1.15x |",
            f"| torchshelf load / safetensors load (first touch) | {ts['load_first'] / base['load_first']:.2f}x | <= 1.15x |",
        ]
        if "bentoml" in io:
            b = io["bentoml"]
            lines += [
                f"| BentoML save / torchshelf save | {b['save'] / ts['save']:.2f}x | >= 1.5x |",
                f"| BentoML load / torchshelf load (warm) | {b['load_warm'] / ts['load_warm']:.2f}x | >= 3x |",
                f"| BentoML load / torchshelf load (first touch) | {b['load_first'] / ts['load_first']:.2f}x | >= 3x |",
            ]
    if cli:
        sizes = cli.get("sizes", [cli["versions"]])
        ms = lambda key: f"{cli[key] * 1000:.0f}" if key in cli else "n/a"  # noqa: E731
        lines += [
            "",
            "| command (whole process, median ms) | "
            + " | ".join(f"{n} versions" for n in sizes)
            + " |",
            "|---|" + "---|" * len(sizes),
            "| python -c pass | " + " | ".join(ms("python") for _ in sizes) + " |",
            "| shelf list | " + " | ".join(ms(f"shelf_list@{n}") for n in sizes) + " |",
            "| shelf list --latest | " + " | ".join(ms(f"shelf_latest@{n}") for n in sizes) + " |",
            "| shelf get TAG --output json | "
            + " | ".join(ms(f"shelf_get@{n}") for n in sizes)
            + " |",
            "| shelf list --output json (every manifest read) | "
            + " | ".join(ms(f"shelf_json@{n}") for n in sizes)
            + " |",
            "| shelf list, index just deleted (rebuild) | "
            + " | ".join(ms(f"shelf_list_rebuild@{n}") for n in sizes)
            + " |",
        ]
        if "bentoml_list" in cli:
            lines += [
                f"| bentoml models list | {ms('bentoml_list')} | "
                + " | ".join("-" for _ in sizes[1:])
                + " |",
                f"| bentoml models get TAG | {ms('bentoml_get')} | "
                + " | ".join("-" for _ in sizes[1:])
                + " |",
            ]
        lines += ["", "| ratio / figure | value | target |", "|---|---|---|"]
        goals = {1000: 0.100, 10000: 0.150}
        for n in sizes:
            key = f"shelf_list@{n}"
            goal = f"<= {goals[n] * 1000:.0f} ms" if n in goals else ""
            lines.append(f"| shelf list at {n} versions | {cli[key] * 1000:.0f} ms | {goal} |")
            lines.append(
                f"| shelf list at {n} / python -c pass | {cli[key] / cli['python']:.1f}x | |"
            )
        if "bentoml_list" in cli:
            first = f"shelf_list@{sizes[0]}"
            lines += [
                f"| bentoml models list / shelf list ({sizes[0]} versions) | {cli['bentoml_list'] / cli[first]:.1f}x | >= 15x |",
                f"| bentoml models get / shelf get | {cli['bentoml_get'] / cli[f'shelf_get@{sizes[0]}']:.1f}x | |",
            ]
        if cli.get("bytecode_compiled"):
            lines.append("\ntorchshelf's bytecode was compiled first, as a wheel install does.")
        if "load_avg" in cli:
            lines.append(
                f"\nLoad average (1, 5, 15 min) before / after: {cli['load_avg'][:3]} / {cli['load_avg'][3:]}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--versions",
        type=int,
        nargs="+",
        default=[1000, 10000],
        help="store sizes for the cli part",
    )
    parser.add_argument("--cli-repeats", type=int, default=11)
    parser.add_argument("--only", choices=["io", "cli"])
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchshelf-compare-"))
    try:
        io = bench_io(args.size_mib, args.repeats, work) if args.only != "cli" else None
        cli = bench_cli(args.versions, args.cli_repeats, work) if args.only != "io" else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"io": io, "cli": cli}, indent=2))
    print(render(io, cli))


if __name__ == "__main__":
    main()
