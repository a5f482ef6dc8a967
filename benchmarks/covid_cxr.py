"""covid-cxr under DP: image-only vs text vs image+text (+ age/sex), with and without the label-leak guard,
MiniLM frozen vs its last layer trained; non-private references.

Each variant is a real `mmfed simulate` run (Flower simulation engine, Ray) on the real subset in
../shared/data/covid_chestxray_subset: 5 regional sites, 133 training and 48 test X-rays in all, so every
accuracy carries a wide interval (printed). Text is de-identified in every run (the default).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import shared_data, simulate_timed, table  # noqa: E402

from mmfed.federation.config import FederationConfig  # noqa: E402

EPSILON = 8.0
ROUNDS = 10
BATCH = 16
# (name, modalities, mask diagnosis terms, train MiniLM's last layer, target ε (0: no DP))
VARIANTS = [
    ("image only", "image", False, False, EPSILON),
    ("text only, notes as written", "text", False, False, EPSILON),
    ("text only, label-leak guard", "text", True, False, EPSILON),
    ("image+text, notes as written", "image,text", False, False, EPSILON),
    ("image+text, label-leak guard", "image,text", True, False, EPSILON),
    ("image+text, label-leak guard, MiniLM last layer trained", "image,text", True, True, EPSILON),
    ("image+text+age/sex, label-leak guard", "image,text,tabular", True, False, EPSILON),
    ("image only, no DP", "image", False, False, 0.0),
    ("text only, notes as written, no DP", "text", False, False, 0.0),
    ("image+text, label-leak guard, no DP", "image,text", True, False, 0.0),
    ("image+text+age/sex, label-leak guard, no DP", "image,text,tabular", True, False, 0.0),
]

PROBES = (
    "Recipe probes (in-process grid, same settings, text only, notes as written, ε = 8): AdamW collapsed to "
    "one class (50.0%) where SGD with momentum reached 72.9% (AdamW without DP: 77.1%); on image+text with the "
    "guard, late fusion 56.3% vs attention 43.8% — hence SGD and late fusion in every row."
)

SIZE = (
    "**Why the fused model does not learn under DP at this size, and what size would.** Under DP-SGD the "
    "noise in a site's mean gradient per step is σ·C·√d / (q·N) against a clipped signal of at most C, so "
    "the ratio σ√d / (qN) decides (d trained parameters, qN the expected batch). fsdd-mnist's recipe (450 "
    "records per site, 34,442 trained parameters of a publicly pretrained model, ε = 3) runs at 6.1 and "
    "reaches 97%; its whole model from random weights (212,682 parameters) runs at 15 and stays at chance "
    '("Accuracy under differential privacy"). Here the image+text model trains 89,380 parameters (the X-ray '
    "CNN from random weights; MiniLM frozen) on 15–38 X-rays per site: at ε = 8 and 27 records the ratio is "
    "46. With σ from the PRV accountant for the same ε and 10 rounds, it falls to 9.3 at 100 records per "
    "site (batch 64), 5.7 at 300 and 4.0 at 1,000. No public chest X-ray set is available offline to "
    "pretrain the image encoder, so about **300 training X-rays per site**, ten times this subset, would put "
    "the fused model where fsdd-mnist learns. A publicly pretrained X-ray encoder, frozen, would need far "
    "fewer: training only the fusion and classifier (260 parameters) runs at 2.5 with 27 records. But the "
    "frozen features must carry the signal: with the random image CNN and the text projection frozen "
    "(`freeze-encoders`, probe of 2026-12-02, same settings, label-leak guard), the fused model scored 54.2% "
    "at round 10. The text-only run with the guard (68.8%) is above the majority class but cannot be told "
    "from it on 48 test X-rays: an exact one-sided binomial test against 56.2% gives p = 0.053."
)


def interval(p: float, n: int) -> str:
    """95% normal-approximation half-width, in points."""
    return f"±{196 * math.sqrt(max(p * (1 - p), 1e-12) / n):.0f}"


def main() -> str:
    data = shared_data()
    if data is None or not (data / "covid_chestxray_subset").is_dir():
        return "## covid-cxr: hospital X-rays and notes under DP\n\nskipped: ../shared/data not found\n"
    out = Path(tempfile.mkdtemp(prefix="mmfed-bench-cxr-"))
    rows = []
    majority = None
    for i, (name, mods, guard, last_layer, target) in enumerate(VARIANTS):
        run = out / f"v{i}"
        cfg = FederationConfig(
            scenario="covid-cxr",
            data_dir=str(data / "covid_chestxray_subset"),
            sites=5,
            rounds=ROUNDS,
            local_epochs=2,
            batch_size=BATCH,
            modalities=mods,
            fusion="late",
            optimizer="sgd",
            text_encoder="minilm",
            freeze_text=not last_layer,
            mask_diagnosis=guard,
            min_sites=3,
            target_epsilon=target,
            run_dir=str(run),
            state_dir=str(run / "sites"),
        )
        summary, wall, metrics = simulate_timed(cfg)
        glob = [m for m in metrics if m["kind"] == "global"]
        n = glob[-1]["examples"]
        acc = summary["global_accuracy"]
        if majority is None:
            majority = _majority(cfg)
        eps = summary.get("epsilon_prv_max")
        rows.append(
            [
                name,
                f"{acc:.1%} {interval(acc, n)}",
                f"{max(g['accuracy'] for g in glob):.1%}",
                f"{eps:.2f}" if eps is not None else "∞",
                f"{wall:.0f}",
            ]
        )
        print(f"{name}: {acc:.2%} (n={n}), ε {eps} ({wall:.0f}s)", flush=True)
    return "\n".join(
        [
            "## covid-cxr: hospital X-rays and notes under DP",
            "",
            f"`python benchmarks/covid_cxr.py` — `mmfed simulate --scenario covid-cxr`, the real subset "
            "(186 X-rays with notes, 5 listed twice; 5 regional sites: Asia & Middle East, Italy, Spain, "
            f"United Kingdom, other), COVID-19 vs other findings, {ROUNDS} rounds, 2 local epochs, batch "
            f"{BATCH}, late fusion, SGD (lr 0.05, momentum 0.9), 64 px grey CNN image encoder from random "
            "weights, pretrained MiniLM text encoder (frozen unless noted), age/sex through a small MLP, "
            f"notes de-identified, target ε = {EPSILON:g} per site over the run (δ = 1e-5, PRV) unless "
            "no DP. Accuracy on the 48 test X-rays of all sites (split by patient) with a 95% interval; "
            f"always predicting the majority class scores {majority:.1%}. **Small data**: 133 training "
            "X-rays in all, 15–38 per site; differences under ~15 points are within noise.",
            "",
            table(
                ["federation", f"accuracy, round {ROUNDS}", "best round", "ε PRV (max site)", "seconds"], rows
            ),
            "",
            'Reading it: the notes as written name the diagnosis ("tested positive for COVID-19"), so the '
            "text rows without the guard measure leakage, not skill; the guarded rows are the honest "
            "numbers. The X-ray CNN has ~130 private training images and no public pretraining here. "
            + PROBES,
            "",
            SIZE,
        ]
    )


def _majority(cfg: FederationConfig) -> float:
    from mmfed.federation.run_task import run_scenario, run_task

    tests = [s.label for m in run_scenario(cfg, run_task(cfg)).load_sites() for s in m.split("test")]
    return max(tests.count(label) for label in set(tests)) / len(tests)


if __name__ == "__main__":
    print(main())
