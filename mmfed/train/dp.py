"""One site's DP-SGD training for one round (Opacus): Poisson sampling, per-sample clipping, Gaussian noise,
with the sampling and the noise drawn from the site's secret source and the geometry from its public size.

The accountant is never fresh: it is loaded with the site's whole history before the round and handed
back after it, so Opacus itself counts every step, including the noise-only steps of empty batches.
"""

from __future__ import annotations

import warnings

import torch
from opacus import PrivacyEngine
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmfed.privacy.accounting import History
from mmfed.privacy.geometry import Geometry
from mmfed.privacy.randomness import DPRandomness
from mmfed.train.loop import Metrics, _Tally, batch_to, is_empty, train_step

# measured on the default model (BENCHMARKS.md, "DP step cost"): the fastest mode that is exact there
DEFAULT_GRAD_SAMPLE_MODE = "ew"


def make_optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.AdamW(params, lr=lr)


class SecretPoissonBatches:
    """Opacus' Poisson sampling, drawn from the site's secret source: each of the step's `batches` draws
    takes every record independently with probability `sample_rate` (an empty draw is a valid draw)."""

    def __init__(self, records: int, sample_rate: float, batches: int, randomness: DPRandomness):
        self.records, self.sample_rate, self.batches, self.randomness = (
            records,
            sample_rate,
            batches,
            randomness,
        )

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            yield self.randomness.poisson_indices(self.records, self.sample_rate)


def _secret_noise(optimizer, randomness: DPRandomness) -> None:
    """Opacus' DPOptimizer.add_noise with the noise drawn from `randomness`, for all parameters at once."""
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    params = optimizer.params
    for p in params:
        _check_processed_flag(p.summed_grad)
    ref = params[0].summed_grad
    noise = randomness.normal(sum(p.summed_grad.numel() for p in params), std, ref.device, ref.dtype)
    offset = 0
    for p in params:
        size = p.summed_grad.numel()
        p.grad = (p.summed_grad + noise[offset : offset + size].view_as(p.summed_grad)).view_as(p)
        offset += size
        _mark_as_processed(p.summed_grad)


def train_private(
    model: nn.Module,
    dataset: Dataset,
    collate,
    *,
    lr: float,
    optimizer: str = "adamw",
    noise_multiplier: float,
    max_grad_norm: float,
    geometry: Geometry,
    history: History,
    device: torch.device,
    randomness: DPRandomness,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
) -> tuple[Metrics, History]:
    """Train `model` in place; returns (training metrics, the accountant's history after the round).

    The geometry comes from the site's public size, never from len(dataset): sample rate, steps and the
    normaliser of the noisy sum (expected batch size) are the same for neighbouring datasets. Sampling
    and noise come from `randomness`, the site's secret source."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    base_optimizer = make_optimizer(optimizer, params, lr)
    batches = SecretPoissonBatches(len(dataset), geometry.sample_rate, geometry.batches_per_epoch, randomness)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    with warnings.catch_warnings():
        # Opacus warns that torch's PRNG is not a CSPRNG: it draws nothing here (see mmfed.privacy.randomness)
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="prv")
        engine.accountant.load_state_dict({"history": list(history), "mechanism": "prv"})
        # poisson_sampling=False: the loader already samples (secretly); Opacus takes q = 1/len(loader)
        private_model, private_opt, _ = engine.make_private(
            module=model,
            optimizer=base_optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,
            grad_sample_mode=grad_sample_mode,
        )
    # Opacus would divide by int(len(dataset) * q) (its issue #819), a function of the exact N
    private_opt.expected_batch_size = geometry.expected_batch_size
    private_opt.add_noise = lambda: _secret_noise(private_opt, randomness)
    tally = _Tally()
    try:
        for _ in range(geometry.local_epochs):
            for batch in loader:
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
