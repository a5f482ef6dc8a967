"""White-box canaries for a site's own operator: gradient-space canaries inserted at the DP step (Nasr et al.
2023, "Tight auditing of differentially private machine learning"; scored for the one-run audit of
mmfed.audit.empirical_bound).

Canary i is a fixed direction u_i (a random unit vector in a random subspace of the trainable parameters,
the same for every step), entered as one more per-sample gradient of norm `norm_factor`·C. Its coin says
whether it is in the site's data at all; when it is, each step's Poisson sampling takes it with probability q
like any record. It goes through Opacus' own clipping with the data (so clipping brings it to C, and a
missing clip lets all of it through), then the site's noise is added as usual.

Scored from what the DP step releases — each step's privatized gradient, the output the accountant
accounts for (every step, as if released): y_i = <noisy sum, u_i> / C is N(b, σ²) with b = 1 if the canary
was sampled and 0 if not, and the score is the sum over steps of the log-likelihood ratio
log(1 − q + q·exp((2y − 1) / (2σ²))) under the nominal σ and q (a function of released outputs only: the
bound holds for any score). The auditor never uses which steps sampled a canary.

`inserted` is the only way in: a context manager that sets mmfed.train.dp's hook in this process for the
audit's own in-process federation. `Fault` (positive controls: too little noise, no clipping) exists for
tests and the benchmark and is reachable only through this module's Python API.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmfed.errors import MMFedError

SUBSPACE = 8192  # coordinates the canary directions live in (memory: m x SUBSPACE floats)
NORM_FACTOR = 10.0  # a canary's gradient is this many times the clipping norm, before clipping


@dataclass(frozen=True)
class Fault:
    """A deliberately broken DP step, for positive controls only: noise drawn at `noise_scale` times the
    accounted σ, and/or no per-sample clipping (the noise still calibrated to C)."""

    noise_scale: float = 1.0
    clipping: bool = True


class GradientCanaries:
    """m canaries, their secret coins, and their scores after training. `applies(dataset)` picks the
    audited site's DP steps (other sites train untouched)."""

    def __init__(
        self,
        m: int,
        applies: Callable[[object], bool],
        *,
        seed: int | None = None,
        subspace: int = SUBSPACE,
        norm_factor: float = NORM_FACTOR,
        fault: Fault = Fault(),
    ):
        self.rng = np.random.default_rng(seed)  # the auditor's own secret: coins, directions, sampling
        self.m, self.applies, self.subspace, self.norm_factor, self.fault = (
            m,
            applies,
            subspace,
            norm_factor,
            fault,
        )
        self.included = self.rng.random(m) < 0.5
        self.scores = np.zeros(m)
        self.steps = 0
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self._coords: torch.Tensor | None = None
        self._dirs: torch.Tensor | None = None

    def _directions(self, total: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._dirs is None:
            size = min(self.subspace, total)
            coords = np.sort(self.rng.choice(total, size=size, replace=False))
            dirs = self.rng.standard_normal((self.m, size))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            self._coords = torch.as_tensor(coords, device=device)
            self._dirs = torch.as_tensor(dirs, device=device, dtype=dtype)
        return self._coords, self._dirs

    def __call__(self, optimizer, dataset, sample_rate: float) -> None:
        """mmfed.train.dp's hook: wrap this DP optimizer's clipping and noise when it trains the site."""
        if not self.applies(dataset):
            return
        if not hasattr(optimizer, "clip_and_accumulate") or "FastGradient" in type(optimizer).__name__:
            raise MMFedError(
                "the white-box audit needs per-sample gradients: use grad-sample-mode ew or hooks"
            )
        self.sample_rate = sample_rate
        clip, noise = optimizer.clip_and_accumulate, optimizer.add_noise
        optimizer.clip_and_accumulate = lambda: self._clip(optimizer, clip)
        optimizer.add_noise = lambda: self._noise(optimizer, noise)

    def _clip(self, optimizer, clip) -> None:
        params = optimizer.params
        total = sum(p.numel() for p in params)
        coords, dirs = self._directions(total, params[0].device, params[0].dtype)
        sampled = np.flatnonzero(self.included & (self.rng.random(self.m) < self.sample_rate))
        if len(sampled):
            rows = torch.zeros((len(sampled), total), device=coords.device, dtype=dirs.dtype)
            rows[:, coords] = dirs[torch.as_tensor(sampled, device=coords.device)]
            rows *= self.norm_factor * optimizer.max_grad_norm
            offset = 0
            for p in params:
                mine = rows[:, offset : offset + p.numel()].view(len(sampled), *p.shape)
                p.grad_sample = torch.cat([p.grad_sample, mine.to(p.grad_sample.dtype)])
                offset += p.numel()
        norm = optimizer.max_grad_norm
        if not self.fault.clipping:
            optimizer.max_grad_norm = math.inf
        try:
            clip()
        finally:
            optimizer.max_grad_norm = norm

    def _noise(self, optimizer, noise) -> None:
        sigma = optimizer.noise_multiplier
        optimizer.noise_multiplier = sigma * self.fault.noise_scale
        try:
            noise()
        finally:
            optimizer.noise_multiplier = sigma  # the accountant's step hook reads the accounted σ
        self.noise_multiplier = sigma
        coords, dirs = self._directions(sum(p.numel() for p in optimizer.params), None, None)
        flat = torch.cat([p.grad.reshape(-1) for p in optimizer.params])
        y = (dirs @ flat[coords].to(dirs.dtype)).double().cpu().numpy() / optimizer.max_grad_norm
        self.scores += step_score(y, sigma, self.sample_rate)
        self.steps += 1


def step_score(y: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """log[((1 − q)·N(y; 0, σ²) + q·N(y; 1, σ²)) / N(y; 0, σ²)]: the log-likelihood ratio of one step's
    observation for "in the data" against "not"; y itself when there is no noise to weigh it by."""
    if sigma <= 0:
        return y
    return np.logaddexp(math.log1p(-q), math.log(q) + (2 * y - 1) / (2 * sigma**2)) if q < 1 else y


@contextlib.contextmanager
def inserted(canaries: GradientCanaries):
    """Insert `canaries` into every DP step of this process while the block runs (the audit's own
    in-process federation); the hook is removed on the way out, whatever happens."""
    from mmfed.train import dp

    if dp._audit_hook is not None:
        raise MMFedError("an empirical audit is already running in this process")
    dp._audit_hook = canaries
    try:
        yield canaries
    finally:
        dp._audit_hook = None
