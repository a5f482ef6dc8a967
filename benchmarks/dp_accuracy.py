"""fsdd-mnist federation under DP-SGD at every site: ε = 1, 3, 8 per site (δ = 1e-5) vs no DP.

Each variant is a real `mmfed simulate` run (Flower simulation engine, Ray): 6 speaker sites, image+audio,
attention fusion. Each site derives σ from the target ε over the whole planned run, accounts with Opacus'
PRV accountant (persisted in the run's state dir) and signs its ledger; the table's ε is the largest
cumulative ε any site reported. The recipe: the initial global model is trained centrally on the
embedded, public digits-av data (measured here too), and the sites fine-tune its fusion and classifier
under DP; one more run trains the whole model from random weights at ε = 3 for contrast.
Writes benchmarks/dp_accuracy.png.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, plot_curves, shared_data, simulate_timed, table  # noqa: E402

from mmfed.federation.config import FederationConfig  # noqa: E402

BATCH = 64
CLIP = 1.0
LR = 3e-2
# (name, target ε (0: no DP), start from the public model and freeze the encoders)
VARIANTS = [
    ("ε = 1", 1.0, True),
    ("ε = 3", 3.0, True),
    ("ε = 8", 8.0, True),
    ("no DP", 0.0, True),
    ("ε = 3, whole model from random weights", 3.0, False),
]


TUNING = (
    "What limits it, and how the recipe was chosen (ε = 3, 10 planned rounds, same code on the in-process "
    "grid of tests/localgrid.py, one run each): DP noise grows with the number of trained parameters "
    "(‖noise‖ ≈ σ·C·√d / batch) while each site has only ~450 records, so training all 212,682 parameters "
    "from random weights stays near chance (10% after 13 of 20 rounds at ε = 1). Starting from the public "
    "digits-av model helps most; freezing its encoders (34,442 trained parameters) and raising the "
    "learning rate does the rest: accuracy after round 3 was 74.0% (whole model, lr 2e-3), 71.3% (whole "
    "model, 5e-4), 72.7% (frozen, 2e-3), 79.3% (frozen, 1e-2; 86.0% at round 10), 87.0% (frozen, 3e-2; "
    "90.3% at rounds 7–8) and 72.0% (frozen, 1e-1). The remaining gap to the non-private run is the "
    "noise, and the domain gap between digits-av (8x8 digits, synthetic voices) and MNIST/FSDD that the "
    "frozen encoders cannot close: without DP the same recipe reaches {no_dp} here (95.33% in the "
    "previous measurement, 2026-11-28), while the whole model trained from random weights without DP "
    'reaches 99.33% in 20 rounds ("Federated accuracy on fsdd-mnist").'
)

RERUN = (
    "Runs are no longer reproducible: every DP round draws its Poisson sample and its noise from OS "
    "entropy (`mmfed/privacy/randomness.py`), where they used to come from torch's generator seeded by "
    "(run seed, round, site). The previous table (2026-11-28) had, at round 10, 84.33% at ε = 1, 90.67% "
    "at ε = 3, 93.00% at ε = 8 and 95.33% without DP. The geometry, now from the public size (the train "
    "count rounded to two significant digits), is the same for these sites: each has 450 training "
    "records, public size 450, so q = 1/8 and 8 steps per round as before (the same σ and ε); only the "
    "noisy sum's normaliser moves, 56.25 instead of Opacus' 56. Two earlier runs on 2026-12-01 gave "
    "83.33% / 85.67% at ε = 1, 91.00% / 88.67% at ε = 3 and 94.33% / 92.33% at ε = 8: run to run the DP "
    "rows move by up to 2.3 points, so differences of that size are noise. The no-DP run draws nothing "
    "secret and gave 96.33% both times, its public model 68.67% zero-shot both times (69.33% on "
    "2026-11-28): those moves come from changes since then, not from the secret randomness."
)


def public_model(out: Path) -> tuple[Path, float]:
    """Centralised training on digits-av (generated offline: public, no patient in it)."""
    from mmfed.config import TrainConfig
    from mmfed.data.scenarios import prepare_scenario
    from mmfed.train.centralized import train_centralized

    summary = train_centralized(
        prepare_scenario("digits-av"), out / "public", modalities="image,audio", train=TrainConfig(epochs=15)
    )
    return out / "public" / "model.safetensors", summary["test_accuracy"]


def main(rounds: int = 10) -> str:
    data = shared_data()
    if data is None:
        return "## Accuracy under differential privacy\n\nskipped: ../shared/data not found\n"
    out = Path(tempfile.mkdtemp(prefix="mmfed-bench-dp-"))
    initial, public_acc = public_model(out)
    zero_shot, no_dp = None, "—"
    rows, curves = [], {}
    for i, (name, target, pretrained) in enumerate(VARIANTS):
        run = out / f"v{i}"
        cfg = FederationConfig(
            scenario="fsdd-mnist",
            data_dir=str(data),
            sites=6,
            rounds=rounds,
            modalities="image,audio",
            fusion="attention",
            batch_size=BATCH,
            lr=LR if pretrained else 0.0,
            initial_model=str(initial) if pretrained else "",
            freeze_encoders=pretrained,
            server_test_dir="",
            min_sites=4,
            target_epsilon=target,
            max_grad_norm=CLIP,
            delta=1e-5,
            run_dir=str(run),
            state_dir=str(run / "sites"),
        )
        summary, wall, metrics = simulate_timed(cfg)
        glob = [m for m in metrics if m["kind"] == "global"]
        fits = [m for m in metrics if m["kind"] == "fit" and m.get("status") == "accepted"]
        sigmas = sorted({round(m["noise_multiplier"], 3) for m in fits if "noise_multiplier" in m})
        curves[name] = [g["accuracy"] for g in glob]
        if target == 0.0:
            no_dp = f"{summary['global_accuracy']:.2%}"
        eps = summary.get("epsilon_prv_max")
        rows.append(
            [
                name,
                f"{summary['global_accuracy']:.2%}",
                f"{max(curves[name]):.2%}",
                f"{eps:.3f}" if eps is not None else "∞",
                f"{summary['epsilon_rdp_max']:.3f}" if eps is not None else "∞",
                f"{sigmas[0]:g}–{sigmas[-1]:g}" if sigmas else "—",
                f"{wall:.0f}",
            ]
        )
        print(f"{name}: {summary['global_accuracy']:.2%}, ε {eps} ({wall:.0f}s)", flush=True)
        if zero_shot is None and pretrained:
            zero_shot = _zero_shot(cfg, initial)
    plot_curves(
        curves, REPO / "benchmarks" / "dp_accuracy.png", "fsdd-mnist, 6 sites, DP-SGD per site", (0, 100)
    )
    return "\n".join(
        [
            "## Accuracy under differential privacy",
            "",
            f"`python benchmarks/dp_accuracy.py` — `mmfed simulate`, fsdd-mnist, 6 speaker sites (~450 training "
            f"pairs each), image+audio, attention fusion, {rounds} rounds, 1 local epoch, batch {BATCH} "
            f"(Poisson sample rate 1/8, 8 steps per round), clipping norm {CLIP}, δ = 1e-5, `--target-epsilon` "
            "per site over the whole run (each site derives σ from it with the PRV accountant). Unless noted, "
            "the run starts from a model trained centrally on the public, embedded digits-av data "
            f"(`--initial-model`; {public_acc:.2%} on digits-av's test split, "
            f"{zero_shot:.2%} on fsdd-mnist's before any federated round) and the sites fine-tune the fusion "
            f"and classifier only (`--freeze-encoders`, AdamW lr {LR:g}, cosine); the from-scratch row trains "
            "all 212,682 parameters (AdamW lr 2e-3). ε columns: the largest cumulative ε any site reported "
            "at the end (PRV and RDP).",
            "",
            table(
                ["privacy", f"accuracy, round {rounds}", "best round", "ε PRV", "ε RDP", "σ", "seconds"],
                rows,
            ),
            "",
            "![global accuracy per round under DP](benchmarks/dp_accuracy.png)",
            "",
            RERUN,
            "",
            TUNING.format(no_dp=no_dp),
        ]
    )


def _zero_shot(cfg: FederationConfig, initial: Path) -> float:
    """Accuracy of the public model on all sites' fsdd-mnist test splits, before any federated round."""
    import torch
    from torch.utils.data import DataLoader

    from mmfed.checkpoint import load_checkpoint
    from mmfed.data.dataset import Collate, MultimodalDataset, Processors
    from mmfed.federation.run_task import run_scenario, run_task
    from mmfed.models import build_model
    from mmfed.train.loop import evaluate

    scenario = run_scenario(cfg, run_task(cfg))
    model_cfg = run_task(cfg).model_config()
    model = build_model(model_cfg)
    load_checkpoint(model, initial)
    test = [s for site in scenario.load_sites() for s in site.samples if s.split == "test"]
    data = MultimodalDataset(test, Processors(scenario.spec, model_cfg.modalities))
    loader = DataLoader(data, batch_size=256, collate_fn=Collate(scenario.spec, model_cfg.modalities))
    return evaluate(model, loader, torch.device("cpu")).accuracy


if __name__ == "__main__":
    print(main())
