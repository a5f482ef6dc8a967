"""DP step time / plain step time for the default model, for each Opacus grad-sample mode.

Default model: image+audio, attention fusion, CNN encoders; batch 64 of real-shaped inputs (28x28 image,
40x63 log-mel). Every variant is timed round-robin in one process, so the ratios are comparable even on a
noisy machine. A DP step = per-sample gradients + per-sample clipping + noise + optimizer step.
"""

from __future__ import annotations

import sys
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

MODES = ("hooks", "ew", "functorch", "ghost")


def fake_batch(spec: DataSpec, modalities: tuple[str, ...], batch: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(batch):
        item = {"label": torch.tensor(i % 10), "presence": torch.ones(len(modalities), dtype=torch.bool)}
        for key, (shape, _) in modality_shapes(spec, modalities).items():
            item[key] = torch.randn(shape, generator=g)
        items.append(item)
    return items


def main(batch: int = 64, repeats: int = 15) -> str:
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
    dp_opt = torch.optim.SGD([p for p in frozen_dp.parameters() if p.requires_grad], lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen_dp, dp_opt, _ = PrivacyEngine(accountant="prv").make_private(
            module=frozen_dp,
            optimizer=dp_opt,
            data_loader=DataLoader(items, batch_size=batch, collate_fn=collate),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode="ew",
            poisson_sampling=False,
        )

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved(steps, repeats)
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
    frozen_base = median(times["plain, frozen encoders"])
    frozen_ratio = median(times["ew, frozen encoders"]) / frozen_base
    rows.append(["plain, encoders frozen", f"{frozen_base * 1000:.0f}", "1.00x"])
    rows.append(
        ["ew, encoders frozen", f"{median(times['ew, frozen encoders']) * 1000:.0f}", f"{frozen_ratio:.2f}x"]
    )
    best_ratio = median(times[best]) / base
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
            "that ew and hooks give exactly the clipped per-sample gradients). The last two rows are the DP "
            "fine-tuning recipe (`--freeze-encoders`): per-sample gradients only for fusion + classifier "
            "(34,442 parameters), each ratio against the plain step of the same frozen model. "
            f"Goal DP / plain ≤ 1.3x: whole model {'met' if best_ratio <= 1.3 else 'not met'} "
            f"({best_ratio:.2f}x with {best}), frozen encoders {'met' if frozen_ratio <= 1.3 else 'not met'} "
            f"({frozen_ratio:.2f}x). Absolute times depend on the machine's load; the ratios are what to compare.",
        ]
    )


if __name__ == "__main__":
    print(main())
