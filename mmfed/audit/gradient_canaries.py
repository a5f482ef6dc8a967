"""White-box canaries for a site's own operator: gradient-space canaries inserted at the DP step (Nasr et al.
2023, "Tight auditing of differentially private machine learning"; scored for the one-run audit of
mmfed.audit.empirical_bound).

Canary i is a Dirac canary: one trainable coordinate c_i of its own (distinct canaries, distinct
coordinates, so canaries never see each other), entered at every step as one more per-sample gradient,
`norm_factor`·C along e_{c_i}. Its coin says whether it is in the site's data at all; when it is, each
step's Poisson sampling takes it with probability q like any record (the auditor never uses which steps
did). It goes through Opacus' own clipping with the data (clipping brings it to C; a missing clip lets
all of it through), then the site's noise is added as usual.

Scored from each step's privatized sum (the output the accountant accounts for, every step as if
released) minus the data's own clipped sum at c_i, clipped by the same mechanism in a separate call:
y_i = (noisy sum − data sum)[c_i] / C is N(b, σ²), b = 1 if the canary was sampled and 0 if not. The
data's sum does not depend on any canary's coin given the model so far (the data's sampling is its own),
so releasing it too leaves every step the same subsampled Gaussian in each canary: the accounted ε still
bounds what the scores see, and the bound holds. The score is the sum over steps of the log-likelihood
ratio log(1 − q + q·exp((2y − 1) / (2σ²))) under the nominal σ and q.

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
        norm_factor: float = NORM_FACTOR,
        fault: Fault = Fault(),
    ):
        self.rng = np.random.default_rng(seed)  # the auditor's own secret: coins, directions, sampling
        self.m, self.applies, self.norm_factor, self.fault = m, applies, norm_factor, fault
        self.included = self.rng.random(m) < 0.5
        self.scores = np.zeros(m)
        self.steps = 0
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self._coords: torch.Tensor | None = None  # canary i's coordinate among the trained parameters
        self._data: torch.Tensor | None = None  # this step's data clipped sum at those coordinates
        self.error: MMFedError | None = None  # raised at a DP step (inside the run): the audit re-raises it

    def _coordinates(self, total: int, device) -> torch.Tensor:
        if self._coords is None:
            if self.m > total:
                self.error = MMFedError(
                    f"--canaries {self.m}: the white-box audit gives each canary a trained parameter of its "
                    f"own and the model trains {total}; give at most {total}"
                )
                raise self.error
            self._coords = torch.as_tensor(self.rng.choice(total, size=self.m, replace=False), device=device)
        return self._coords

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
        coords = self._coordinates(total, params[0].device)
        norm = optimizer.max_grad_norm
        if not self.fault.clipping:
            optimizer.max_grad_norm = math.inf
        try:
            data = [p.grad_sample for p in params]
            clip()  # the data alone, through the mechanism's own clipping: what the scores subtract
            self._data = torch.cat([p.summed_grad.reshape(-1) for p in params])[coords].clone()
            sampled = np.flatnonzero(self.included & (self.rng.random(self.m) < self.sample_rate))
            rows = torch.zeros((len(sampled), total), device=coords.device, dtype=data[0].dtype)
            picked = coords[torch.as_tensor(sampled, device=coords.device, dtype=torch.long)]
            rows[torch.arange(len(sampled), device=coords.device), picked] = self.norm_factor * norm
            offset = 0
            for p, own in zip(params, data, strict=True):
                mine = rows[:, offset : offset + p.numel()].view(len(sampled), *p.shape)
                p.summed_grad = None
                p.grad_sample = torch.cat([own, mine.to(own.dtype)])  # a new tensor: not yet processed
                offset += p.numel()
            clip()  # the data and the sampled canaries together: the step as trained
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
        flat = torch.cat([p.grad.reshape(-1) for p in optimizer.params])
        y = (flat[self._coords] - self._data).double().cpu().numpy() / optimizer.max_grad_norm
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
