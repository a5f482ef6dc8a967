"""The one-run audit's bound (mmfed.audit.empirical_bound) against a direct computation."""

import math

import numpy as np
import pytest

from mmfed.audit.empirical_bound import (
    audit_bound,
    design_power,
    epsilon_lower_bound,
    guesses,
    k_grid,
    p_value,
)


def brute_tail(r: int, u: int, q: float) -> float:
    """P[Binomial(r, q) >= u], summed term by term."""
    return math.fsum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(u, 0), r + 1))


def brute_p_value(m, r, v, eps, delta):
    q = math.exp(eps) / (1 + math.exp(eps))
    f = lambda u: brute_tail(r, u, q)  # noqa: E731
    alpha = max(((f(v - i) - f(v)) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, f(v) + 2 * m * delta * alpha)


@pytest.mark.parametrize("r,v", [(1, 1), (5, 4), (10, 10), (20, 13), (30, 5), (12, 0)])
@pytest.mark.parametrize("eps", [0.0, 2.0, 6.0])
@pytest.mark.parametrize("delta", [0.0, 1e-2])
def test_p_value_matches_a_direct_sum(r, v, eps, delta):
    m = 3 * r
    assert p_value(m, r, v, eps, delta) == pytest.approx(
        brute_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-12
    )


def test_the_bound_is_the_largest_rejected_epsilon():
    m, r, v, delta, beta = 1000, 100, 80, 1e-5, 0.05
    eps = epsilon_lower_bound(m, r, v, delta, beta)
    assert eps > 0
    assert brute_p_value(m, r, v, eps, delta) < beta <= brute_p_value(m, r, v, eps + 1e-6, delta)


def test_the_bound_grows_with_right_guesses_and_falls_with_confidence():
    bounds = [epsilon_lower_bound(1000, 100, v, 1e-5, 0.05) for v in range(50, 101, 5)]
    assert bounds == sorted(bounds) and bounds[0] == 0.0 and bounds[-1] > bounds[-2]
    assert epsilon_lower_bound(1000, 100, 90, 1e-5, 0.01) < epsilon_lower_bound(1000, 100, 90, 1e-5, 0.05)
    # δ can only weaken the bound
    assert epsilon_lower_bound(1000, 100, 90, 1e-3, 0.05) < epsilon_lower_bound(1000, 100, 90, 0.0, 0.05)


def test_known_limits():
    # half right is what a coin does: nothing is shown
    assert epsilon_lower_bound(1000, 500, 250, 1e-5, 0.05) == 0.0
    # all r right, pure DP: P = p^r < beta  <=>  eps > log(p/(1-p)) with p = beta^(1/r)
    r, beta = 40, 0.05
    p = beta ** (1 / r)
    assert epsilon_lower_bound(r, r, r, 0.0, beta) == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    # the power is the all-right bound at the grid's best k, Bonferroni-corrected
    grid = k_grid(1000)
    assert design_power(1000, 0.0, beta) == pytest.approx(
        max(epsilon_lower_bound(1000, k, k, 0.0, beta / len(grid)) for k in grid)
    )
    with pytest.raises(ValueError):
        p_value(10, 5, 6, 1.0, 0.0)


def test_grid_is_fixed_by_m_and_guesses_abstain_in_the_middle():
    assert k_grid(1000) == [10, 20, 50, 100, 200, 500, 1000]
    assert all(k % 2 == 0 and 2 <= k <= 7 for k in k_grid(7))
    g = guesses(np.array([0.1, 5.0, -3.0, 0.2, 4.0, -1.0]), 4)
    assert list(g) == [0, 1, -1, 0, 1, -1]


def test_audit_bound_over_the_grid():
    rng = np.random.default_rng(0)
    coins = rng.random(1000) < 0.5
    perfect = audit_bound(np.where(coins, 1.0, -1.0) + rng.normal(0, 1e-3, 1000), coins, 1e-5)
    # k = m cannot be all right unless the coins split exactly evenly; k = m/2 can
    assert perfect.correct == perfect.guesses and perfect.guesses < 1000
    level = 0.05 / len(perfect.grid)
    assert perfect.epsilon_lower >= epsilon_lower_bound(1000, 500, 500, 1e-5, level) - 1e-9
    assert perfect.epsilon_lower <= perfect.power
    noise = audit_bound(rng.normal(size=1000), coins, 1e-5)
    assert noise.epsilon_lower < 0.5 and noise.power == perfect.power
    assert perfect.grid == tuple(k_grid(1000)) and perfect.confidence == 0.95


def appendix_d_p_value(m, r, v, eps, delta):
    """The paper's Appendix D p-value (arXiv 2305.08846, `p_value_DP_audit`), loop for loop."""
    from scipy import stats

    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1.0)


def appendix_d_epsilon(m, r, v, delta, p):
    """The paper's Appendix D `get_eps_audit`: bisection on the p-value."""
    eps_min, eps_max = 0.0, 1.0
    while appendix_d_p_value(m, r, v, eps_max, delta) < p:
        eps_max += 1
    for _ in range(30):
        eps = (eps_min + eps_max) / 2
        if appendix_d_p_value(m, r, v, eps, delta) < p:
            eps_min = eps
        else:
            eps_max = eps
    return eps_min


@pytest.mark.parametrize(
    "m,r,v,delta", [(1000, 100, 80, 1e-5), (1000, 1000, 620, 1e-5), (5000, 50, 50, 1e-5), (200, 20, 17, 0.0)]
)
def test_matches_the_papers_appendix_d_code(m, r, v, delta):
    for eps in (0.0, 0.5, 2.0, 5.0):
        assert p_value(m, r, v, eps, delta) == pytest.approx(
            appendix_d_p_value(m, r, v, eps, delta), rel=1e-9
        )
    # δ is charged for all m canaries, guessed or not: more canaries, same guesses, a weaker bound
    assert p_value(2 * m, r, v, 1.0, delta) >= p_value(m, r, v, 1.0, delta)
    # the same ε̂ as the paper's bisection (which stops after 30 halvings of a unit interval)
    assert epsilon_lower_bound(m, r, v, delta, 0.05) == pytest.approx(
        appendix_d_epsilon(m, r, v, delta, 0.05),
        abs=2e-9 * max(1.0, epsilon_lower_bound(m, r, v, delta, 0.05)),
    )
