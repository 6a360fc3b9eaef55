"""`--plot FILE.png`: latency percentiles and throughput against batch size or concurrency.

matplotlib is an optional extra (`pip install 'torchshelf[plot]'`), imported only here and only
when a plot is asked for; `require_matplotlib` lets the CLI refuse before a long run, not after.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import UsageError

__all__ = ["require_matplotlib", "plot_report"]


def require_matplotlib() -> None:
    """Raise a `UsageError` that says how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'torchshelf[plot]'"
        ) from None


def plot_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Draw the `--output json` document `report` to `path` (format from the extension)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never steal focus in a terminal session
    import matplotlib.pyplot as plt

    server = report.get("mode") == "server"
    x_key = "concurrency" if server else "batch_size"
    y_key = "requests_per_s" if server else "throughput_per_s"
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        groups.setdefault("" if server else r.get("variant", "eager"), []).append(r)

    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in groups.items():
        rows = sorted(rows, key=lambda r: r[x_key])
        xs = [r[x_key] for r in rows]
        prefix = f"{name} " if len(groups) > 1 else ""
        for pct, style in (("p50", "-o"), ("p90", "--s"), ("p99", ":^")):
            ax_lat.plot(xs, [r["latency_ms"][pct] for r in rows], style, label=f"{prefix}{pct}")
        ax_thr.plot(xs, [r[y_key] for r in rows], "-o", label=name or None)
    x_label = "concurrency (clients)" if server else "batch size"
    ticks = sorted({r[x_key] for r in report["results"]})
    for ax in (ax_lat, ax_thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.grid(True, which="both", alpha=0.3)
    latencies = [r["latency_ms"][p] for r in report["results"] for p in ("p50", "p99")]
    latencies = [v for v in latencies if v]
    if latencies and max(latencies) / min(latencies) > 20:
        ax_lat.set_yscale("log")  # a tail far above the median would flatten the median's line
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.legend(fontsize="small")
    ax_thr.set_ylabel("requests/s" if server else "items/s")
    ax_thr.set_ylim(bottom=0)  # a truncated axis makes noise look like a trend
    if len(groups) > 1:
        ax_thr.legend(fontsize="small")
    title = f"{report.get('target')} on {report.get('device')}"
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
