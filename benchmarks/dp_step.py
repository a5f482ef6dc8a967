"""DP step time / plain step time for the default model, for each Opacus grad-sample mode, and the cost of
drawing the ew step's noise from the site's secret per-round source (torch generator vs ChaCha20).

Default model: image+audio, attention fusion, CNN encoders; batch 64 of real-shaped inputs (28x28 image,
40x63 log-mel). Every variant is timed round-robin in one process, so the ratios are comparable even on a
noisy machine. A DP step = per-sample gradients + per-sample clipping + noise + optimizer step.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import interleaved, median, table  # noqa: E402
from opacus import PrivacyEngine  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mmfed.config import DataSpec, ModelConfig  # noqa: E402
from mmfed.data.dataset import Collate, modality_shapes  # noqa: E402
from mmfed.models import build_model, count_parameters, forward_batch  # noqa: E402
from mmfed.privacy.randomness import ChaChaRandomness, TorchRandomness  # noqa: E402
from mmfed.train.dp import use_secret_noise  # noqa: E402

MODES = ("hooks", "ew", "functorch", "ghost")
# the ew step with its noise drawn from the site's secret source, as train_private does
NOISE_SOURCES = {
    "ew, torch noise (fresh OS seed)": TorchRandomness,
    "ew, ChaCha20 noise (secure_rng)": ChaChaRandomness,
}
TORCH_NOISE, CHACHA_NOISE = NOISE_SOURCES


def fake_batch(spec: DataSpec, modalities: tuple[str, ...], batch: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(batch):
        item = {"label": torch.tensor(i % 10), "presence": torch.ones(len(modalities), dtype=torch.bool)}
        for key, (shape, _) in modality_shapes(spec, modalities).items():
            item[key] = torch.randn(shape, generator=g)
        items.append(item)
    return items


def ew_private(model, items, collate, batch: int):
    """`model` made private by Opacus (ew, σ = 1, C = 1, no Poisson sampling: one fixed batch); (model, opt)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, _ = PrivacyEngine(accountant="prv").make_private(
            module=model,
            optimizer=opt,
            data_loader=DataLoader(items, batch_size=batch, collate_fn=collate),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode="ew",
            poisson_sampling=False,
        )
    return model, opt


def main(batch: int = 64, repeats: int = 100, draws: int = 300) -> str:
    torch.manual_seed(0)
    spec, mods = DataSpec(), ("image", "audio")
    cfg = ModelConfig.for_data(spec, modalities=mods, fusion="attention")
    items = fake_batch(spec, mods, batch)
    collate = Collate(spec, mods)
    fixed = collate(items)
    steps = {}

    plain = build_model(cfg)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)

    def plain_step() -> None:
        plain_opt.zero_grad()
        F.cross_entropy(forward_batch(plain, fixed), fixed["label"]).backward()
        plain_opt.step()

    steps["plain"] = plain_step
    # the DP fine-tuning recipe: encoders frozen, only fusion + classifier get per-sample gradients
    frozen = build_model(cfg)
    for name, p in frozen.named_parameters():
        p.requires_grad = not name.startswith("encoders.")
    frozen_opt = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.01)

    def frozen_plain_step() -> None:
        frozen_opt.zero_grad()
        F.cross_entropy(forward_batch(frozen, fixed), fixed["label"]).backward()
        frozen_opt.step()

    steps["plain, frozen encoders"] = frozen_plain_step
    frozen_dp = build_model(cfg)
    frozen_dp.load_state_dict(frozen.state_dict())
    for name, p in frozen_dp.named_parameters():
        p.requires_grad = not name.startswith("encoders.")
    frozen_dp, dp_opt = ew_private(frozen_dp, items, collate, batch)

    def frozen_dp_step() -> None:
        dp_opt.zero_grad()
        F.cross_entropy(forward_batch(frozen_dp, fixed), fixed["label"]).backward()
        dp_opt.step()

    steps["ew, frozen encoders"] = frozen_dp_step
    for mode in MODES:
        model = build_model(cfg)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loader = DataLoader(items, batch_size=batch, collate_fn=collate)
        engine = PrivacyEngine(accountant="prv")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "ghost":
                model, opt, crit, loader = engine.make_private(
                    module=model,
                    optimizer=opt,
                    data_loader=loader,
                    noise_multiplier=1.0,
                    max_grad_norm=1.0,
                    grad_sample_mode="ghost",
                    criterion=torch.nn.CrossEntropyLoss(),
                    poisson_sampling=False,
                )
            else:
                model, opt, loader = engine.make_private(
                    module=model,
                    optimizer=opt,
                    data_loader=loader,
                    noise_multiplier=1.0,
                    max_grad_norm=1.0,
                    grad_sample_mode=mode,
                    poisson_sampling=False,
                )
                crit = torch.nn.CrossEntropyLoss()

        def dp_step(model=model, opt=opt, crit=crit) -> None:
            opt.zero_grad()
            loss = crit(forward_batch(model, fixed), fixed["label"])
            loss.backward()
            opt.step()

        steps[mode] = dp_step
    # one ew DP model for both sources, the source swapped per step: the two rows differ in the noise only
    cpu = torch.device("cpu")
    secret_model, secret_opt = ew_private(build_model(cfg), items, collate, batch)
    sources = {label: source(cpu) for label, source in NOISE_SOURCES.items()}
    noise_times: dict[str, list[float]] = {label: [] for label in NOISE_SOURCES}

    def secret_step(label: str) -> None:
        use_secret_noise(secret_opt, sources[label], batch)
        draw_and_add = secret_opt.add_noise

        def timed_noise() -> None:  # the step's own noise (draw + add to the summed gradients)
            t0 = time.perf_counter()
            draw_and_add()
            noise_times[label].append(time.perf_counter() - t0)

        secret_opt.add_noise = timed_noise
        secret_opt.zero_grad()
        F.cross_entropy(forward_batch(secret_model, fixed), fixed["label"]).backward()
        secret_opt.step()

    for label in NOISE_SOURCES:
        steps[label] = lambda label=label: secret_step(label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved(steps, repeats)
    # the noise draw alone: one flat draw of every trainable parameter, as _secret_noise draws it
    numel = sum(p.numel() for p in plain.parameters() if p.requires_grad)
    draw_times = interleaved(
        {label: (lambda s=s: s.normal(numel, 1.0, cpu, torch.float32)) for label, s in sources.items()}, draws
    )
    base = median(times["plain"])
    rows = [["plain (no DP)", f"{base * 1000:.0f}", "1.00x"]]
    best = min(MODES, key=lambda m: median(times[m]))
    for mode in MODES:
        rows.append(
            [
                mode + (" (fastest)" if mode == best else ""),
                f"{median(times[mode]) * 1000:.0f}",
                f"{median(times[mode]) / base:.2f}x",
            ]
        )
    for label in NOISE_SOURCES:
        rows.append([label, f"{median(times[label]) * 1000:.0f}", f"{median(times[label]) / base:.2f}x"])
    frozen_base = median(times["plain, frozen encoders"])
    frozen_ratio = median(times["ew, frozen encoders"]) / frozen_base
    rows.append(["plain, encoders frozen", f"{frozen_base * 1000:.0f}", "1.00x"])
    rows.append(
        ["ew, encoders frozen", f"{median(times['ew, frozen encoders']) * 1000:.0f}", f"{frozen_ratio:.2f}x"]
    )
    best_ratio = median(times[best]) / base
    secure = {}
    for label in NOISE_SOURCES:
        step, noise = times[label], noise_times[label][-repeats:]  # the warm-up steps drew noise too
        secure[label] = {
            "step": median(step),
            "noise": median(noise),
            "rest": median([a - b for a, b in zip(step, noise, strict=True)]),
            "draw": median(draw_times[label]),
        }
    torch_t, chacha_t = secure[TORCH_NOISE], secure[CHACHA_NOISE]
    secure_ratio = chacha_t["step"] / torch_t["step"]
    secure_rows = [
        [
            name,
            f"{t['step'] * 1000:.1f}",
            f"{t['noise'] * 1000:.2f}",
            f"{t['rest'] * 1000:.1f}",
            f"{t['draw'] * 1000:.2f}",
        ]
        for name, t in (
            ("torch generator, fresh OS seed", torch_t),
            ("ChaCha20 keystream, secure_rng", chacha_t),
        )
    ]
    secure_rows.append(
        ["ChaCha20 / torch"]
        + [
            f"{chacha_t[k] / torch_t[k]:.{3 if k == 'step' else 2}f}x"
            for k in ("step", "noise", "rest", "draw")
        ]
    )
    return "\n".join(
        [
            "## DP step cost by Opacus grad-sample mode",
            "",
            f"`python benchmarks/dp_step.py` — default model (image+audio, attention fusion, CNN encoders, "
            f"{count_parameters(plain):,} parameters), batch {batch}, CPU, "
            f"{torch.get_num_threads()} threads; "
            f"median of {repeats} steps per variant, variants interleaved round-robin in one process.",
            "",
            table(["step", "median ms", "DP / plain"], rows),
            "",
            "All four modes train this model (tests/test_models.py checks each; tests/test_privacy.py checks "
            "that ew and hooks give exactly the clipped per-sample gradients). The two `ew, … noise` rows are "
            "the ew step with its noise drawn as `train_private` draws it, from the site's secret per-round "
            "source (`mmfed/privacy/randomness.py`, via `use_secret_noise`) instead of Opacus' own: one model, "
            "the source swapped from step to step. The last two rows are the DP "
            "fine-tuning recipe (`--freeze-encoders`): per-sample gradients only for fusion + classifier "
            "(34,442 parameters), each ratio against the plain step of the same frozen model. "
            f"Goal DP / plain ≤ 1.3x: whole model {'met' if best_ratio <= 1.3 else 'not met'} "
            f"({best_ratio:.2f}x with {best}), frozen encoders {'met' if frozen_ratio <= 1.3 else 'not met'} "
            f"({frozen_ratio:.2f}x). Absolute times depend on the machine's load; the ratios are what to compare.",
            "",
            "### Secure noise source",
            "",
            "The whole-model ew DP step with its noise from each secret source (the two `ew, … noise` rows "
            f"above: the same model and batch, median of {repeats} steps); its noise timed inside the step (the draw of all {numel:,} "
            "parameters in one flat tensor plus adding it to the summed gradients) and the rest of the step "
            "(per step: step minus noise); and the noise draw alone, outside any step: median of "
            f"{draws} draws per source, interleaved. ChaCha20 (`secure_rng`) draws 4 Box-Muller Gaussians "
            "per noise value from the keystream and sums them (Opacus' secure_mode guard against "
            "floating-point attacks); torch draws one value each.",
            "",
            table(
                [
                    "noise source",
                    "DP step, ms",
                    "its noise, ms",
                    "rest of the step, ms",
                    "noise draw alone, ms",
                ],
                secure_rows,
            ),
            "",
            f"Goal ChaCha20 / torch ≤ 1.05x on the DP step: {'met' if secure_ratio <= 1.05 else 'not met'} "
            f"({secure_ratio:.3f}x). The rest of the step does the same work for both (measured "
            f"{chacha_t['rest'] / torch_t['rest']:.2f}x); the noise takes "
            f"{(chacha_t['noise'] - torch_t['noise']) * 1000:.1f} ms more per step "
            f"({(chacha_t['noise'] - torch_t['noise']) / torch_t['step']:.1%} of the torch-noise step). Alone, "
            f"the ChaCha20 draw takes {chacha_t['draw'] * 1000:.1f} ms against {torch_t['draw'] * 1000:.1f} ms.",
        ]
    )


if __name__ == "__main__":
    print(main())
