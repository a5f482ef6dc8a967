"""The evaluation's two pictures (matplotlib, Agg: no display needed): the confusion matrix and the
reliability diagram of the pooled records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str) -> Path:
    """Counts, true class in rows; each cell shaded by its share of the row (the recall of the class)."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(3.5, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(names))
    tilt = sum(len(n) for n in names) > 24  # long names side by side would overlap
    ax.set_xticks(ticks, names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(ticks, names)
    for i in ticks:
        for j in ticks:
            colour = "white" if shares[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(calibration: dict[str, Any], path: Path, title: str) -> Path:
    """Accuracy per confidence bin (bars; the diagonal is perfect calibration), the gap to each bin's mean
    confidence (red), and how many records fall in each bin."""
    plt = _pyplot()
    rows = calibration["table"]
    width = 1.0 / calibration["bins"]
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lower = [r["lower"] for r in rows]
    ax.bar(lower, [r["accuracy"] or 0 for r in rows], width=width, align="edge", edgecolor="black",
           label="accuracy")  # fmt: skip
    filled = [r for r in rows if r["count"]]
    ax.bar(
        [r["lower"] for r in filled],
        [abs(r["accuracy"] - r["confidence"]) for r in filled],
        bottom=[min(r["accuracy"], r["confidence"]) for r in filled],
        width=width, align="edge", color="tab:red", alpha=0.35, hatch="//", edgecolor="tab:red",
        label="gap to the bin's mean confidence",
    )  # fmt: skip
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ece = calibration["ece"]
    ece_text = f"ECE {ece:.3f}" if ece is not None else "no records"
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"{title}\n{ece_text} ({calibration['bins']} equal-width bins)")  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax_count.bar(lower, [r["count"] for r in rows], width=width, align="edge", color="grey")
    ax_count.set(xlabel="confidence (probability of the predicted class)", ylabel="records")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
