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
from mmfed.train.loop import Metrics, _Tally, batch_to, is_empty, make_optimizer, train_step

# measured on the default model (BENCHMARKS.md, "DP step cost"): the fastest mode that is exact there
DEFAULT_GRAD_SAMPLE_MODE = "ew"

# The white-box empirical audit's hook, called with (DP optimizer, dataset, q) once the optimizer is built.
# Set only by mmfed.audit.gradient_canaries.inserted (a context manager) in the auditor's own process:
# no setting, run config, policy or message reaches it.
_audit_hook = None


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


class GuardedRecords(Dataset):
    """A record that fails to load contributes nothing to its step instead of failing the round: the
    failure would happen only in the rounds that sample it, telling the server it is there."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except Exception:  # noqa: BLE001 - any per-record failure is data-dependent (see above)
            self.failed.add(index)
            return None


def _zero_nonfinite(params: list) -> None:
    """A non-finite per-sample gradient would make the whole clipped sum NaN (0 x inf), again only when
    that record is sampled: its non-finite entries count as 0, so each record still adds at most C."""
    for p in params:
        if getattr(p, "grad_sample", None) is not None:
            torch.nan_to_num_(p.grad_sample, nan=0.0, posinf=0.0, neginf=0.0)


def use_secret_noise(optimizer, randomness: DPRandomness, expected_batch_size: float) -> None:
    """Make an Opacus DPOptimizer draw its noise from `randomness` and normalise the noisy sum by the
    public expected batch size (Opacus would divide by int(len(dataset) * q), its issue #819: a function
    of the exact N)."""
    optimizer.expected_batch_size = expected_batch_size
    optimizer.add_noise = lambda: _secret_noise(optimizer, randomness)


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
) -> tuple[Metrics, History, set[int]]:
    """Train `model` in place; returns (training metrics, the accountant's history after the round, the
    indices of records that failed to load and so contributed nothing).

    The geometry comes from the site's public size, never from len(dataset): sample rate, steps and the
    normaliser of the noisy sum (expected batch size) are the same for neighbouring datasets. Sampling
    and noise come from `randomness`, the site's secret source."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    base_optimizer = make_optimizer(optimizer, params, lr)
    batches = SecretPoissonBatches(len(dataset), geometry.sample_rate, geometry.batches_per_epoch, randomness)
    records = GuardedRecords(dataset)
    loader = DataLoader(
        records, batch_sampler=batches, collate_fn=lambda items: collate([i for i in items if i is not None])
    )
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
    use_secret_noise(private_opt, randomness, geometry.expected_batch_size)
    if _audit_hook is not None:
        _audit_hook(private_opt, dataset, geometry.sample_rate)
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
                train_step(
                    private_model,
                    batch_to(batch, device),
                    private_opt,
                    tally,
                    lambda: _zero_nonfinite(params),
                )
    finally:
        if hasattr(private_model, "_close"):
            private_model._close()  # hooks mode: take Opacus' hooks off the shared model
        for p in params:
            p.grad_sample = None
            p.grad = None
    return tally.result(), [tuple(h) for h in engine.accountant.state_dict()["history"]], records.failed
