"""One site's DP-SGD training for one round (Opacus): Poisson sampling, per-sample clipping, Gaussian noise.

The accountant is never fresh: it is loaded with the site's whole history before the round and handed
back after it, so Opacus itself counts every step, including the noise-only steps of empty batches.
"""

from __future__ import annotations

import warnings

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmfed.privacy.accounting import History
from mmfed.train.loop import Metrics, _Tally, batch_to, is_empty, train_step

# measured on the default model (BENCHMARKS.md, "DP step cost"): the fastest mode that is exact there
DEFAULT_GRAD_SAMPLE_MODE = "ew"


def make_optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.AdamW(params, lr=lr)


def train_private(
    model: nn.Module,
    dataset: Dataset,
    collate,
    *,
    lr: float,
    optimizer: str = "adamw",
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int,
    epochs: int,
    history: History,
    device: torch.device,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
) -> tuple[Metrics, History]:
    """Train `model` in place; returns (training metrics, the accountant's history after the round)."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    base_optimizer = make_optimizer(optimizer, params, lr)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    with warnings.catch_warnings():
        # Opacus warns that torch's PRNG is not a CSPRNG (secure_mode needs torchcsprng): see README
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="prv")
        engine.accountant.load_state_dict({"history": list(history), "mechanism": "prv"})
        private_model, private_opt, private_loader = engine.make_private(
            module=model,
            optimizer=base_optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=grad_sample_mode,
        )
    empty_aware = private_loader.collate_fn
    if getattr(empty_aware, "first_batch", "absent") is None and len(dataset):
        # Opacus shapes empty batches after the first non-empty one; when the very first Poisson draw is
        # empty it falls back to iterating dataset[0], which fails for dict samples: give it the structure
        empty_aware.first_batch = collate([dataset[0]])
    tally = _Tally()
    try:
        for _ in range(epochs):
            for batch in private_loader:
                private_opt.zero_grad(set_to_none=True)
                if is_empty(batch):
                    # Poisson sampling drew nobody. DP-SGD still takes a noise-only step: skipping it
                    # would make the update depend on the empty draw, unaccounted.
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                    private_opt.step()
                    continue
                train_step(private_model, batch_to(batch, device), private_opt, tally)
    finally:
        if hasattr(private_model, "_close"):
            private_model._close()  # hooks mode: take Opacus' hooks off the shared model
        for p in params:
            p.grad_sample = None
            p.grad = None
    return tally.result(), [tuple(h) for h in engine.accountant.state_dict()["history"]]
