"""fsdd-mnist federation with whole sites missing one modality: 0%, 30% and 50% of the 6 speaker sites
lack image or audio entirely (`--missing-modality-rate`), no DP.

Each variant is a real `mmfed simulate` run (Flower simulation engine, Ray): image+audio, attention fusion,
per-encoder FedAvg (each encoder averaged over the sites that hold its modality). Every site is evaluated
on its own test split as it is, so a site without audio is scored on images alone. Writes
benchmarks/missing_modality.png.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, plot_curves, shared_data, simulate_timed, table  # noqa: E402

from mmfed.data.partition import missing_modality_plan  # noqa: E402
from mmfed.federation.config import FederationConfig  # noqa: E402

# (missing-modality rate, per-encoder averaging); plain FedAvg rows for comparison
VARIANTS = [(0.0, True), (0.3, True), (0.5, True), (0.3, False), (0.5, False)]
# FedMultimodal (Feng et al., KDD 2023), UCF101 video+audio, top-1 with 50% missing modalities
FEDMULTIMODAL = (69.9, 58.2)


def main(rounds: int = 20) -> str:
    data = shared_data()
    if data is None:
        return "## Sites missing a modality\n\nskipped: ../shared/data not found\n"
    out = Path(tempfile.mkdtemp(prefix="mmfed-bench-missing-"))
    rows, curves, finals, plain = [], {}, {}, {}
    for rate, per_encoder in VARIANTS:
        run = out / f"rate{rate}-{per_encoder}"
        cfg = FederationConfig(
            scenario="fsdd-mnist",
            data_dir=str(data),
            sites=6,
            rounds=rounds,
            local_epochs=1,
            batch_size=32,
            modalities="image,audio",
            fusion="attention",
            min_sites=3,
            missing_modality_rate=rate,
            per_encoder_averaging=per_encoder,
            run_dir=str(run),
        )
        summary, wall, metrics = simulate_timed(cfg)
        glob = [m for m in metrics if m["kind"] == "global"]
        name = f"{rate:.0%} of sites missing a modality" + ("" if per_encoder else ", plain FedAvg")
        curves[name] = [g["accuracy"] for g in glob]
        plan = missing_modality_plan(6, rate, ("image", "audio"), seed=cfg.seed)
        sites = sorted(summary["site_accuracy"])
        lacking = {sites[i]: m for i, m in plan.items()}
        complete = [a for s, a in summary["site_accuracy"].items() if s not in lacking]
        partial = [a for s, a in summary["site_accuracy"].items() if s in lacking]
        (finals if per_encoder else plain)[rate] = summary["global_accuracy"]
        rows.append(
            [
                name,
                ", ".join(f"{s.removeprefix('site_')} lacks {m}" for s, m in lacking.items()) or "—",
                f"{summary['global_accuracy']:.2%}",
                f"{max(curves[name]):.2%}",
                f"{sum(complete) / len(complete):.2%}" if complete else "—",
                f"{sum(partial) / len(partial):.2%}" if partial else "—",
                f"{wall:.0f}",
            ]
        )
        print(f"{name}: {summary['global_accuracy']:.2%} ({wall:.0f}s)", flush=True)
    plot_curves(
        curves, REPO / "benchmarks" / "missing_modality.png", "fsdd-mnist, sites missing a modality", (0, 100)
    )
    ours = 100 * (finals[0.0] - finals[0.5]) / finals[0.0]
    tests = glob[-1]["examples"]
    half_width = 196 * (finals[0.5] * (1 - finals[0.5]) / tests) ** 0.5
    versus = ", ".join(f"{100 * (finals[r] - plain[r]):+.1f} points at {r:.0%}" for r in sorted(plain))
    theirs = 100 * (FEDMULTIMODAL[0] - FEDMULTIMODAL[1]) / FEDMULTIMODAL[0]
    return "\n".join(
        [
            "## Sites missing a modality",
            "",
            f"`python benchmarks/missing_modality.py` — `mmfed simulate`, fsdd-mnist, 6 speaker sites, "
            f"image+audio, attention fusion, {rounds} rounds, 1 local epoch, batch 32, no DP, "
            "`--missing-modality-rate` 0 / 0.3 / 0.5 (2 or 3 whole sites lose image or audio for all their "
            "samples, seeded). Each encoder is averaged over the sites that trained it (per-encoder FedAvg, "
            "the default); the plain FedAvg rows average every encoder over all sites, a site without the "
            "modality contributing a zero update (`per-encoder-averaging = false`). Accuracy is each "
            "site's own test split as the site has it (a site without audio is scored on images alone), "
            "weighted by test examples.",
            "",
            table(
                [
                    "federation",
                    "sites lacking",
                    f"global accuracy, round {rounds}",
                    "best round",
                    "complete sites (mean)",
                    "sites lacking a modality (mean)",
                    "seconds",
                ],
                rows,
            ),
            "",
            "![global accuracy per round with missing modalities](benchmarks/missing_modality.png)",
            "",
            f"Relative drop from 0% to 50% missing: **{ours:.1f}%** here vs {theirs:.1f}% reported by "
            f"FedMultimodal (Feng et al., KDD 2023) for UCF101 (video+audio) top-1 at 50% missing "
            f"({FEDMULTIMODAL[0]} → {FEDMULTIMODAL[1]}). Not like for like: FedMultimodal drops modalities "
            "per sample at every client on a 101-class task, here whole sites lose one modality on a "
            "10-class task whose two modalities each carry the label on their own (image-only 93.67%, "
            "audio-only 86.00% federated), so a missing one costs less.",
            "",
            f"Per-encoder vs plain FedAvg: {versus} — inside the ±{half_width:.1f}-point 95% interval of "
            f"{tests} test samples, so no accuracy difference is measurable on this task. What per-encoder "
            "averaging guarantees is mechanical: an encoder's step is not shrunk toward zero by the sites "
            "that cannot train it.",
        ]
    )


if __name__ == "__main__":
    print(main())
