"""PNG plots of a federated run, from its metrics.jsonl: global accuracy and loss per round, accuracy per
site per round (when the server saw any site's own evaluation: not under SecAgg+)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def write_plots(rows: list[dict[str, Any]], out_dir: Path, title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    glob = sorted((r for r in rows if r.get("kind") == "global"), key=lambda r: r["round"])
    if not glob:
        return []
    rounds = [r["round"] for r in glob]
    written = []
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_acc.plot(rounds, [100 * r["accuracy"] for r in glob], marker="o")
    ax_acc.set(xlabel="round", ylabel="test accuracy (%)", title="global model, federated evaluation")
    ax_loss.plot(rounds, [r["loss"] for r in glob], marker="o", color="tab:red")
    ax_loss.set(xlabel="round", ylabel="test loss", title="global model, federated evaluation")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    written.append(out_dir / "global_metrics.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    per_site: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "evaluate":
            per_site[r["site"]].append((r["round"], 100 * r["accuracy"]))
    if not per_site:  # SecAgg+: the sites' evaluations reach the server summed, no site's on its own
        return written
    fig, ax = plt.subplots(figsize=(7, 4))
    for site in sorted(per_site):
        points = sorted(per_site[site])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=site)
    ax.set(xlabel="round", ylabel="test accuracy (%)", title=f"accuracy per site {title}".strip())
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(per_site) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out_dir / "site_accuracy.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
