"""Empirical privacy audit on fsdd-mnist: `mmfed audit empirical` at site 0 of the DP-accuracy federation
(6 speaker sites, image+audio, attention fusion, its recipe: `initial-model = "pretrained:fsdd-mnist-public"`,
encoders frozen, DP-SGD at every site), ε = 1 / 3 / 8 and without DP, with gradient (white-box) and input
(black-box) canaries.

Each row is one experiment (mmfed.audit.empirical) on the audit's in-process grid: m canaries, each in the
audited site's data by a fair coin; ε̂ the one-run lower bound at 95% (Steinke, Nasr & Jagielski 2023)
over the pre-registered k grid; the design's maximum; the ε the site's (scratch) ledger accounts. The
ideal column is the ε̂ the same design gives on simulated scores of a perfectly isolated canary (the
Dirac canary's exact per-step observation N(b, σ²) at the run's σ, q and steps; the median of 5 draws):
the ceiling of this audit for this mechanism, whatever the implementation. Without DP there is no DP
step to insert gradient canaries into: that row draws the site's noise at 0 (a positive control, the
mechanism with DP switched off at its step); the input row trains with DP off as configured.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import shared_data, table  # noqa: E402

GRADIENT_CANARIES = 5000
INPUT_CANARIES = 500
ROUNDS = 1  # the recipe plans 10; a round took 8-10 minutes here (2 cores shared with other jobs)
BUDGET_S = 22 * 60  # no new row starts after this: the rows left are listed as not run


def config(epsilon: float, data: Path):
    """The DP-accuracy benchmark's recipe at `epsilon` (0: no DP), the public model resolved (cached)."""
    from dp_accuracy import RECIPE, _config

    from mmfed.server.prepare import resolve_initial_model

    recipe = {**RECIPE, "rounds": ROUNDS}
    cfg = _config(data, Path("unused"), epsilon, recipe).replace(run_dir="", state_dir="", min_sites=6)
    return resolve_initial_model(cfg)[0]


def ideal(epsilon: float, m: int, q: float, steps: int, delta: float, draws: int = 5) -> float:
    """ε̂ of this design on simulated perfectly isolated canaries (median of `draws`)."""
    import numpy as np

    from mmfed.audit.empirical_bound import audit_bound
    from mmfed.audit.gradient_canaries import step_score
    from mmfed.privacy import accounting

    sigma = accounting.noise_for_target(epsilon, delta, q, steps)
    rng, out = np.random.default_rng(0), []
    for _ in range(draws):
        inc, score = rng.random(m) < 0.5, np.zeros(m)
        for _ in range(steps):
            y = (inc & (rng.random(m) < q)) + sigma * rng.standard_normal(m)
            score += step_score(y, sigma, q)
        out.append(audit_bound(score, inc, delta).epsilon_lower)
    return float(np.median(out))


def main() -> str:
    from dp_accuracy import BATCH

    from mmfed.audit.empirical import gradient_audit, input_audit
    from mmfed.audit.gradient_canaries import Fault

    data = shared_data()
    if data is None:
        return "## Empirical privacy audit\n\nskipped: ../shared/data not found\n"
    t0 = time.perf_counter()
    runs = [("gradient", 3.0, None), ("gradient", 1.0, None), ("input", 0.0, None), ("gradient", 8.0, None)]
    runs += [("gradient", 1.0, Fault(noise_scale=0.0)), ("input", 3.0, None), ("input", 1.0, None)]
    runs += [("input", 8.0, None)]
    rows, tight, ideals = [], [], []
    for mode, epsilon, fault in runs:
        cfg = config(epsilon, data)
        name = "no DP (noise drawn at 0)" if fault else (f"ε = {epsilon:g}" if epsilon else "no DP")
        if time.perf_counter() - t0 > BUDGET_S:
            rows.append([mode, name, "—", "—", "not run (time budget)", "—", "—", "—", "—", "—"])
            continue
        try:
            if mode == "gradient":
                r = gradient_audit(cfg, site=0, canaries=GRADIENT_CANARIES, fault=fault)
            else:
                r = input_audit(cfg, site=0, canaries=INPUT_CANARIES)
        except Exception as exc:  # noqa: BLE001 - a failed row is reported in the table, the others still run
            print(f"{mode} {name}: failed: {exc}", flush=True)
            rows.append([mode, name, "—", "—", f"failed: {exc}", "—", "—", "—", "—", "—"])
            continue
        acc = r.epsilon_accounted
        print(f"{mode} {name}: ε̂ {r.epsilon_lower:.3f} / ε {acc} ({r.seconds:.0f}s)", flush=True)
        ratio = acc / r.epsilon_lower if acc and r.epsilon_lower > 0 else float("inf")
        best = "—"
        if mode == "gradient" and fault is None:
            q, steps = 1 / 8, r.steps  # the site's geometry (450 records, batch 64) and its DP steps
            top = ideal(epsilon, r.canaries, q, steps, r.delta)
            best, _ = f"{top:.3f}", ideals.append(f"ε = {epsilon:g}: {top:.2f}")
            if epsilon <= 3:
                tight.append(ratio <= 2 and not r.violation)
        rows.append([
            mode, name, r.canaries, f"{acc:.3f}" if acc is not None else "∞", f"{r.epsilon_lower:.3f}",
            (f"{ratio:.1f}x" if ratio != float("inf") else "∞") if acc else "—", best, f"{r.power:.3f}", "**yes**" if r.violation else "no",
            f"{r.seconds:.0f}",
        ])  # fmt: skip
    ceiling = "; ".join(ideals) or "not measured"
    shown = [f"{r[1]}: ε̂ {r[4]}" for r in rows if r[0] == "input"]
    plain_input = "; ".join(shown) or "not measured"
    header = ["canaries", "privacy", "m", "ε accounted", "ε̂ (95%)", "ε / ε̂", "ideal ε̂", "design max",
              "violation", "seconds"]  # fmt: skip
    return "\n".join(
        [
            "## Empirical privacy audit",
            "",
            "`python benchmarks/empirical_audit.py` — `mmfed audit empirical` at site 0 of the fsdd-mnist "
            f'federation of "Accuracy under differential privacy" (6 speaker sites, image+audio, attention '
            f"fusion, {ROUNDS} round{'s' if ROUNDS > 1 else ''} (the recipe plans 10; fewer for time), batch {BATCH}, q = 1/8, its recipe's initial model "
            "`pretrained:fsdd-mnist-public`, encoders frozen, C = 1, δ = 1e-5). Gradient canaries "
            f"(white-box, m = {GRADIENT_CANARIES}): each a trained coordinate of its own, a 10·C gradient "
            "there Poisson-sampled with the records when its coin put it in, scored from each step's "
            "privatized sum minus the data's clipped sum. Input canaries (black-box, "
            f"m = {INPUT_CANARIES}): digits-public images and speech with a wrong label, planted in site "
            "0's training data by a fair coin, scored by the rise of their label's log-probability from "
            "the initial to the final global model. ε̂: the one-run bound at 95% over the k grid "
            "(Bonferroni); design max: the ε̂ with every guess right; ideal ε̂: the same design on "
            "simulated, perfectly isolated canaries at the run's σ, q and steps.",
            "",
            table(header, rows),
            "",
            f"Goal (white-box ε̂ within a factor 2 of the accounted ε at ε = 1–3, never above it): "
            f"{'met' if tight and all(tight) else '**not met**'}. Never above it: no violation on the "
            "mechanism as built (a violation would show in the column). Within 2×: the ideal column is what "
            "this test shows for this mechanism with m canaries when nothing but the DP noise and the "
            f"subsampling hides a canary ({ceiling}); the one-run bound of Steinke et al. for a "
            "subsampled Gaussian with a few thousand canaries stays well below ε, "
            "so the factor 2 is out of this test's reach here. Input canaries see only the global "
            f"models and are weak: {plain_input}.",
            f"Measured in {time.perf_counter() - t0:.0f}s on the 2 shared cores.",
        ]
    )


if __name__ == "__main__":
    print(main())
