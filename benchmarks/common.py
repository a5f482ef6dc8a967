"""Helpers shared by the benchmark scripts: where the real data is, timing, markdown tables."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    path = Path(os.environ.get("MMFED_SHARED_DATA", REPO.parent / "shared" / "data"))
    return path if (path / "fsdd").is_dir() else None


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each fn `repeats` times, round-robin, so machine noise hits every variant alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def simulate_timed(cfg) -> tuple[dict, float, list[dict]]:
    """One real `mmfed simulate` run of `cfg` (Ray, 1 CPU per site): (summary, wall seconds, metrics rows)."""
    import json

    from mmfed.server.simulation import simulate

    t0 = time.perf_counter()
    summary = simulate(cfg, cpus_per_site=1.0)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    return summary, wall, rows


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(curves: dict[str, list[float]], path: Path, title: str, ylim: tuple[float, float]) -> None:
    """Accuracy (0..1) per round, one line per variant, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, accs in curves.items():
        ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], marker=".", label=name)
    ax.set(xlabel="round", ylabel="global test accuracy (%)", title=title)
    ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
