"""Privacy accounting for DP-SGD with Poisson sampling, on Opacus' own accountants.

A history is Opacus' accountant state: a list of (noise_multiplier, sample_rate, steps). ε of a history is
always the whole history's — there is no per-round accountant anywhere. PRV (Opacus' default, tight) and
RDP (looser, classic) are reported side by side.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable

from mmfed.errors import ConfigError

History = list[tuple[float, float, int]]

# the PRV estimate is an upper bound within this absolute ε error (Opacus' default)
PRV_EPS_ERROR = 0.01
# RDP over integer orders only: both Opacus and Google's dp-accounting compute those exactly (a finite
# binomial sum) and agree to ~1e-14; fractional orders are series whose truncation differs between them.
RDP_ORDERS = (*range(2, 33), 40, 48, 64, 96, 128, 256)


def compact(history: Iterable[tuple[float, float, int]]) -> History:
    """Merge consecutive entries with the same (σ, q), as Opacus' accountants do while stepping."""
    out: History = []
    for sigma, q, steps in history:
        sigma, q, steps = float(sigma), float(q), int(steps)
        if steps <= 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + steps)
        else:
            out.append((sigma, q, steps))
    return out


def epsilon_prv(history: History, delta: float) -> float:
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    return _prv(tuple(compact(history)), delta)


@functools.lru_cache(maxsize=256)
def _prv(history: tuple, delta: float) -> float:
    from opacus.accountants import PRVAccountant  # imported here: opacus pulls in torch (slow to start)

    accountant = PRVAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about its own numerics at small σ
        return float(accountant.get_epsilon(delta, eps_error=PRV_EPS_ERROR))


def epsilon_rdp(history: History, delta: float) -> float:
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = compact(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the smallest alpha" at small σ
        return float(accountant.get_epsilon(delta, alphas=list(RDP_ORDERS)))


@functools.lru_cache(maxsize=64)
def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The σ that spends `target_epsilon` (PRV) over `steps` steps at `sample_rate` — a whole run."""
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0:
        raise ConfigError("target-epsilon", f"must be > 0, got {target_epsilon}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant="prv",
                    epsilon_tolerance=0.01,
                )
            )
        except ValueError as exc:
            raise ConfigError(
                "target-epsilon",
                f"no noise multiplier reaches ε={target_epsilon} at δ={delta} over {steps} steps "
                f"(sample rate {sample_rate:.4g}): {exc}; choose a larger target or fewer rounds",
            ) from None
