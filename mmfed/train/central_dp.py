"""Central DP-SGD for `mmfed train --target-epsilon`: the pooled data trained under the same mechanism a
site uses (mmfed.train.dp.train_private: secret Poisson sampling and noise, clipping, the public size's
geometry), accounted with Opacus' PRV accountant over the whole training, never reset between epochs.

It is the reference a federation's accuracy under DP is compared with ("the price of federation"): one
trusted curator holding every site's records, sample-level (ε, δ)-DP for the released model. Each epoch is
one train_private call (one pass at sample rate q = 1/ceil(P/B), P the pooled count rounded to two
significant digits, as a simulated site's public size), its history carried into the next.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from mmfed.errors import ConfigError
from mmfed.train.loop import Metrics, evaluate, seed_everything


@dataclass(frozen=True)
class CentralPrivacy:
    target_epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def validate(self) -> None:
        if not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise ConfigError("--target-epsilon", f"must be a positive number, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError("--delta", f"must be in (0, 1), got {self.delta}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError("--max-grad-norm", f"must be a positive number, got {self.max_grad_norm}")


def train_epochs_private(
    model: torch.nn.Module,
    train_set,
    collate,
    eval_loaders: tuple,
    privacy: CentralPrivacy,
    train,
    device: torch.device,
    log: TextIO,
    progress,
) -> tuple[Metrics, dict[str, Any]]:
    """`train.epochs` DP epochs, evaluating after each one (a line of `log`); (last test metrics, what the
    summary records of the mechanism: σ, geometry, ε PRV and RDP at δ)."""
    from mmfed.privacy.accounting import epsilon_prv, epsilon_rdp, noise_for_target
    from mmfed.privacy.geometry import Geometry, rounded_size
    from mmfed.privacy.randomness import fresh_randomness
    from mmfed.train.dp import train_private

    test_loader, val_loader = eval_loaders
    # every random draw of DP training is secret, as at a site: augmentation, modality dropout and model
    # dropout too (how much of a known stream they use depends on which records were sampled)
    seed_everything(int.from_bytes(os.urandom(4), "little"))
    geometry = Geometry(rounded_size(len(train_set)), train.batch_size, local_epochs=1)
    sigma = noise_for_target(
        privacy.target_epsilon, privacy.delta, geometry.sample_rate, geometry.steps * train.epochs
    )
    history: list = []
    test = Metrics()
    for epoch in range(1, train.epochs + 1):
        t0 = time.perf_counter()
        lr = 0.5 * train.lr * (1 + math.cos(math.pi * (epoch - 1) / train.epochs))  # cosine, as without DP
        fit, history, _failed = train_private(
            model,
            train_set,
            collate,
            lr=lr,
            noise_multiplier=sigma,
            max_grad_norm=privacy.max_grad_norm,
            geometry=geometry,
            history=history,
            device=device,
            randomness=fresh_randomness(True, device),
        )
        test = evaluate(model, test_loader, device)
        row: dict[str, Any] = {"epoch": epoch, **test.as_dict("test_")}  # DP: no exact train metrics
        if val_loader is not None:
            row.update(evaluate(model, val_loader, device).as_dict("val_"))
        row["epsilon_prv"] = epsilon_prv(history, privacy.delta)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        log.write(json.dumps(row) + "\n")
        log.flush()
        if progress.on_epoch:
            progress.on_epoch(epoch, row)
    return test, {
        "private": True,
        "target_epsilon": privacy.target_epsilon,
        "delta": privacy.delta,
        "max_grad_norm": privacy.max_grad_norm,
        "noise_multiplier": sigma,
        "public_examples": geometry.public_examples,
        "sample_rate": geometry.sample_rate,
        "steps": geometry.steps * train.epochs,
        "epsilon_prv": epsilon_prv(history, privacy.delta),
        "epsilon_rdp": epsilon_rdp(history, privacy.delta),
    }
