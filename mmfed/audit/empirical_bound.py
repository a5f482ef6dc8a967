"""The one-run audit's lower bound on ε (Steinke, Nasr & Jagielski, "Privacy auditing with one (1)
training run", NeurIPS 2023).

The experiment: m canaries, each included in training independently with probability 1/2 (S_i ∈ {-1, +1}).
From scores computed after training the auditor guesses T_i ∈ {-1, 0, +1} (0: abstain) for r = |{T_i ≠ 0}|
of them, v of the guesses right. What is implemented is the paper's main result for approximate DP, in
the form of the reference code printed in its Appendix D (arXiv 2305.08846: `p_value_DP_audit`, the
p-value, and `get_eps_audit`, the bisection), which this module reproduces exactly (tested against a
port of that code and against a direct sum): if the mechanism is (ε, δ)-DP in the canaries' inclusion,
then for every v

    P[W ≥ v] ≤ f(v) + 2·m·δ · max_{i = 1..v} (f(v − i) − f(v)) / i,    f(u) = P[Binomial(r, p_ε) ≥ u],

with p_ε = e^ε / (1 + e^ε), the accuracy of ε-DP randomised response. δ enters only through that second
term, multiplied by the number of canaries m (all of them, guessed or not). `p_value` is the right-hand
side; `epsilon_lower_bound` the largest ε it rejects at level β (bisection: it grows with ε).

Choosing how many to guess after seeing the scores would be testing many hypotheses: k is taken from a
grid fixed before the run (`K_FRACTIONS` of m), every k is tested at β / len(grid) (Bonferroni), and the
result is the largest ε̂ over the grid — a lower bound at confidence 1 − β overall. The auditor guesses
"included" for the k/2 highest scores and "excluded" for the k/2 lowest, abstaining on the middle.

The design's maximum (its power): the ε̂ it would show if every guess were right, the largest over the
grid. A mechanism audited at its accounted ε can never be shown to leak more than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

# the pre-registered grid: guess for this fraction of the m canaries (half each way)
K_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BISECTION_STEPS = 50
EPSILON_CEILING = 100.0


def _p_guess(epsilon: float) -> float:
    return 1.0 / (1.0 + math.exp(-epsilon))


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The probability of v or more right guesses out of r (m canaries) under (ε, δ)-DP: the theorem's
    bound above, capped at 1."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = _p_guess(epsilon)
    tail = float(binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    alpha = 0.0
    if delta > 0 and v > 0:
        # (f(v - i) - f(v)) = P[v - i <= Binomial < v] for i = 1..v
        between = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
        alpha = float(np.max(between / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest ε such that (ε, δ)-DP is rejected at level β by v right guesses of r: ε̂, a lower bound
    on the mechanism's ε at confidence 1 − β. 0 when even ε = 0 is not rejected."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must lie in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, 2 * high
        if high > EPSILON_CEILING:
            return EPSILON_CEILING
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < beta:
            low = mid
        else:
            high = mid
    return low


def k_grid(m: int, fractions: tuple[float, ...] = K_FRACTIONS) -> list[int]:
    """How many canaries to guess for, fixed by m alone (even, at least 2, at most m)."""
    ks = {min(m - m % 2, max(2, 2 * round(f * m / 2))) for f in fractions}
    return sorted(k for k in ks if k >= 2)


@dataclass(frozen=True)
class AuditBound:
    """ε̂ at confidence 1 − β, how it was reached, and the design's maximum."""

    epsilon_lower: float
    guesses: int  # k: guesses at the k that gave ε̂
    correct: int  # right guesses among them
    canaries: int  # m
    beta: float
    delta: float
    grid: tuple[int, ...]
    power: float  # the design's maximum: ε̂ if every guess were right

    @property
    def confidence(self) -> float:
        return 1.0 - self.beta


def guesses(scores: np.ndarray, k: int) -> np.ndarray:
    """+1 for the k/2 highest scores, -1 for the k/2 lowest, 0 (abstain) for the rest (ties by index)."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    guess = np.zeros(len(order), dtype=int)
    guess[order[: k // 2]] = 1
    guess[order[len(order) - k // 2 :]] = -1
    return guess


def audit_bound(scores, included, delta: float, beta: float = 0.05, fractions=K_FRACTIONS) -> AuditBound:
    """ε̂ from canary scores (higher: more likely included) and the coins (`included`, booleans), the best
    over the pre-registered k grid, each k tested at β / len(grid)."""
    scores = np.asarray(scores, dtype=float)
    truth = np.where(np.asarray(included, dtype=bool), 1, -1)
    m = len(scores)
    if m != len(truth) or m < 2:
        raise ValueError(
            f"need at least 2 canaries and one coin per score, got {m} scores, {len(truth)} coins"
        )
    grid = k_grid(m, fractions)
    level = beta / len(grid)
    best = (0.0, grid[-1], 0)
    for k in grid:
        right = int(np.sum(guesses(scores, k) == truth))  # abstentions (0) are never right
        eps = epsilon_lower_bound(m, k, right, delta, level)
        if eps > best[0] or (best[0] == 0.0 and k == grid[-1]):
            best = (eps, k, right)
    return AuditBound(
        best[0], best[1], best[2], m, beta, delta, tuple(grid), design_power(m, delta, beta, grid)
    )


def design_power(m: int, delta: float, beta: float, grid: list[int] | None = None) -> float:
    """The largest ε̂ the design can show: every guess right, at the grid's best k."""
    grid = grid or k_grid(m)
    return max(epsilon_lower_bound(m, k, k, delta, beta / len(grid)) for k in grid)
