"""Independent recomputation of ε from a site ledger's recorded (σ, sample rate, steps), by Google's
dp-accounting (and, `thorough`, Opacus and dp-accounting's PLD accountant): see mmfed.audit.check for what
each check compares and how far apart two numbers may be.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmfed.privacy import accounting, ledger
from mmfed.privacy.budget_state import ledger_history

if TYPE_CHECKING:
    from mmfed.audit.check import SiteAudit

SAME = 1e-6  # relative: our own recomputation of what the site recorded
INDEPENDENT_RDP = 0.01  # relative: Opacus vs dp-accounting RDP
INDEPENDENT_PRV = 0.02  # relative: Opacus PRV vs dp-accounting PLD (two numerical methods)


@dataclass
class DataBudget:
    """One site's budget: every release, whatever the data version."""

    fingerprint: str
    releases: int
    runs: int
    epsilon_prv: float
    epsilon_rdp: float
    delta: float
    cap: float | None
    checks: dict[str, float] = field(default_factory=dict)  # independent recomputations
    data_versions: int = 1  # data fingerprints its releases were made on

    @property
    def remaining(self) -> float | None:
        return None if self.cap is None else self.cap - self.epsilon_prv

    @property
    def over_cap(self) -> bool:
        return self.cap is not None and self.epsilon_prv > self.cap


def entry_line(path: Path, entry: dict[str, Any]) -> str:
    if entry.get("kind") == ledger.ROTATION:
        return f"{path}: line {entry['index'] + 1} (entry {entry['index']}, key rotation)"
    where = f"entry {entry['index']}, run {entry['run_id'][:8]}, round {entry['round']}"
    return f"{path}: line {entry['index'] + 1} ({where})"


_RDP_CACHE: dict[tuple[float, float, tuple], np.ndarray] = {}


def _rdp_curve(sigma: float, q: float, orders: tuple) -> np.ndarray:
    """dp-accounting's per-step RDP of the Poisson-subsampled Gaussian at `orders`."""
    key = (sigma, q, orders)
    if key not in _RDP_CACHE:
        rdp = dp_accounting_rdp()
        _RDP_CACHE[key] = np.asarray(
            rdp._compute_rdp_poisson_subsampled_gaussian(q, sigma, np.asarray(orders, dtype=float)),
            dtype=float,
        )
    return _RDP_CACHE[key]


_RDP_MODULE = "dp_accounting.rdp.rdp_privacy_accountant"


def dp_accounting_rdp() -> types.ModuleType:
    """dp-accounting's RDP accountant module, the very module `import dp_accounting` provides, loaded
    without running the package's `__init__`: that also imports its PLD and calibration code (scipy.stats,
    scipy.signal: ~0.6 s of the default audit's 2 s budget), which only `thorough` uses. The submodules it
    loads stay in `sys.modules`, so a later `import dp_accounting` reuses them (one `dp_event`, one
    `RdpAccountant`)."""
    if _RDP_MODULE in sys.modules:
        return sys.modules[_RDP_MODULE]
    if "dp_accounting" in sys.modules:
        return importlib.import_module(_RDP_MODULE)
    spec = importlib.util.find_spec("dp_accounting")
    if spec is None or not spec.submodule_search_locations:
        return importlib.import_module(_RDP_MODULE)  # (not a plain package: its own error, if any)
    package = types.ModuleType("dp_accounting")  # a bare stand-in, for the import of its submodules only
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["dp_accounting"] = package
    try:
        return importlib.import_module(_RDP_MODULE)
    finally:
        if sys.modules.get("dp_accounting") is package:
            del sys.modules["dp_accounting"]


def recompute(
    result: SiteAudit,
    path: Path,
    fingerprint: str,
    group: list[dict[str, Any]],
    recorded_here: list[dict[str, Any]],
    cap_file: float | None,
    thorough: bool,
) -> DataBudget:
    """ε composed over `group` in order; the entries of `recorded_here` (those whose recorded ε is over
    this scope) must match it. The budget's ε is the recomputed one when the last entry recorded
    another scope (a site whose data versions each started a budget, before one budget per site)."""
    delta = _check_deltas(result, path, fingerprint, group)
    orders = tuple(group[0].get("accountant", {}).get("rdp", {}).get("orders", accounting.RDP_ORDERS))
    cumulative, recomputed = _rdp_epsilons(group, orders)
    mine = {id(e) for e in recorded_here}
    here = np.asarray([id(e) in mine for e in group])
    recorded_rdp = np.asarray([e["epsilon_rdp"] for e in group])
    recorded_prv = np.asarray([e["epsilon_prv"] for e in group])
    _check_each_entry(result, path, group, here, recomputed, recorded_rdp, recorded_prv)
    final_google = _google_rdp(cumulative[-1], orders, delta)
    checks = {"rdp_dp_accounting": final_google}
    history = ledger_history(group)
    if not here[-1]:  # the last entry recorded a per-data ε: the site's total is recomputed, not read
        return _budget(fingerprint, group, float(accounting.epsilon_prv(history, delta)),
                       float(recomputed[-1]), delta, cap_file, checks)  # fmt: skip
    if abs(final_google - recorded_rdp[-1]) > INDEPENDENT_RDP * recorded_rdp[-1]:
        result.problems.append(
            f"{entry_line(path, group[-1])}: epsilon_rdp {recorded_rdp[-1]:.6g} disagrees with "
            f"dp-accounting's {final_google:.6g} by more than {INDEPENDENT_RDP:.0%}"
        )
    if thorough:
        _check_thorough(result, path, group[-1], history, delta, recorded_rdp[-1], recorded_prv[-1], checks)
    return _budget(
        fingerprint, group, float(recorded_prv[-1]), float(recorded_rdp[-1]), delta, cap_file, checks
    )


def _check_deltas(result: SiteAudit, path: Path, fingerprint: str, group: list[dict[str, Any]]) -> float:
    """The δ of the budget (its last entry's); notes a change of δ, flags a δ ≥ 1/n."""
    deltas = {e["delta"] for e in group}
    delta = group[-1]["delta"]
    if len(deltas) > 1:  # the site changed its policy's δ: each entry is checked at its own δ
        result.notes.append(f"data {fingerprint[:19]}: entries use different δ {sorted(deltas)}")
    large = [e for e in group if e.get("public_examples") and e["delta"] * e["public_examples"] >= 1]
    if large:  # δ ≥ 1/n allows releasing a record outright: the site's plan refuses it; flag old entries
        e = large[0]
        result.problems.append(
            f"{entry_line(path, e)}: δ={e['delta']:g} is not below 1/{e['public_examples']} "
            "(1 / the public size)"
        )
    return delta


def _rdp_epsilons(group: list[dict[str, Any]], orders: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative RDP curve after each entry, its ε at that entry's δ), every entry at once."""
    alphas = np.asarray(orders, dtype=float)
    steps = np.asarray([e["steps"] for e in group], dtype=float)
    curves = np.stack(
        [_rdp_curve(float(e["noise_multiplier"]), float(e["sample_rate"]), orders) for e in group]
    )
    cumulative = np.cumsum(curves * steps[:, None], axis=0)
    # RDP -> (ε, δ): the improved conversion both libraries use (Balle et al. 2020), every entry at once
    log_delta = np.log(np.asarray([e["delta"] for e in group], dtype=float))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        eps_all = cumulative - (log_delta + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    return cumulative, np.nanmin(eps_all, axis=1)


def _check_each_entry(
    result: SiteAudit,
    path: Path,
    group: list[dict[str, Any]],
    here: np.ndarray,
    recomputed: np.ndarray,
    recorded_rdp: np.ndarray,
    recorded_prv: np.ndarray,
) -> None:
    """The entries recorded over this scope (`here`): RDP ε as recomputed, both ε never decreasing,
    PRV ε never above its RDP bound."""
    bad = np.flatnonzero(here & (np.abs(recorded_rdp - recomputed) > SAME * np.maximum(recomputed, 1e-12)))
    if bad.size:
        e = group[bad[0]]
        result.problems.append(
            f"{entry_line(path, e)}: epsilon_rdp {e['epsilon_rdp']:.6g} recorded, {recomputed[bad[0]]:.6g} "
            "recomputed from the history"
        )
    for name, values in (("epsilon_prv", recorded_prv[here]), ("epsilon_rdp", recorded_rdp[here])):
        drops = np.flatnonzero(np.diff(values) < 0)
        if drops.size:
            later = [e for e, is_here in zip(group, here, strict=True) if is_here][drops[0] + 1]
            result.problems.append(f"{entry_line(path, later)}: cumulative {name} decreased")
    above = np.flatnonzero(here & (recorded_prv > recomputed + accounting.PRV_EPS_ERROR))
    if above.size:
        e = group[above[0]]
        result.problems.append(
            f"{entry_line(path, e)}: epsilon_prv {e['epsilon_prv']:.6g} is above its RDP bound "
            f"{recomputed[above[0]]:.6g}"
        )


def _check_thorough(
    result: SiteAudit,
    path: Path,
    last: dict[str, Any],
    history: accounting.History,
    delta: float,
    recorded_rdp: float,
    recorded_prv: float,
    checks: dict[str, float],
) -> None:
    """The final ε (`last` entry's) recomputed with Opacus (RDP, PRV) and dp-accounting's PLD; adds them to
    `checks`."""
    prv = accounting.epsilon_prv(history, delta)
    pld = _google_pld(history, delta)
    checks.update(rdp_opacus=accounting.epsilon_rdp(history, delta), prv_opacus=prv, pld_dp_accounting=pld)
    if abs(checks["rdp_opacus"] - recorded_rdp) > SAME * recorded_rdp:
        result.problems.append(
            f"{entry_line(path, last)}: epsilon_rdp {recorded_rdp:.6g} recorded, Opacus gives "
            f"{checks['rdp_opacus']:.6g}"
        )
    if abs(prv - recorded_prv) > SAME * max(prv, 1e-12):
        result.problems.append(
            f"{entry_line(path, last)}: epsilon_prv {recorded_prv:.6g} recorded, {prv:.6g} recomputed"
        )
    if abs(pld - recorded_prv) > INDEPENDENT_PRV * recorded_prv:
        result.problems.append(
            f"{entry_line(path, last)}: epsilon_prv {recorded_prv:.6g} disagrees with "
            "dp-accounting's "
            f"PLD {pld:.6g} by more than {INDEPENDENT_PRV:.0%}"
        )


def _budget(fingerprint, group, epsilon_prv, epsilon_rdp, delta, cap_file, checks) -> DataBudget:
    recorded_caps = [e.get("max_epsilon") for e in group if e.get("max_epsilon") is not None]
    cap = cap_file if cap_file is not None else (recorded_caps[-1] if recorded_caps else None)
    return DataBudget(
        fingerprint=fingerprint,
        releases=len(group),
        runs=len({e["run_id"] for e in group}),
        epsilon_prv=epsilon_prv,
        epsilon_rdp=epsilon_rdp,
        delta=delta,
        cap=cap,
        checks=checks,
        data_versions=len({e["data_fingerprint"] for e in group}),
    )


def _google_rdp(total: np.ndarray, orders: tuple, delta: float) -> float:
    return float(dp_accounting_rdp().compute_epsilon(np.asarray(orders, dtype=float), total, delta)[0])


def _google_pld(history: accounting.History, delta: float) -> float:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    pld = pld_privacy_accountant.PLDAccountant()
    for sigma, q, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        pld.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pld.get_epsilon(delta))
