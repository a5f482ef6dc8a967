"""Audit of site privacy ledgers: integrity (chain, signatures, key) and an independent recomputation of ε.

ε is recomputed from each entry's recorded (σ, sample rate, steps), composed over every earlier entry
on the same data fingerprint, by Google's dp-accounting — not by Opacus, which the sites used:
- RDP, every entry: dp-accounting's RDP curve of the subsampled Gaussian, composed and converted to
  (ε, δ) with the bound both libraries use; must match the recorded `epsilon_rdp` to 1e-6 (integer
  orders are exact in both); the final ε also through dp-accounting's own `compute_epsilon`.
- PRV, every entry: the recorded `epsilon_prv` must never decrease and never exceed the RDP bound.
- every signature is verified; `thorough` also recomputes each site's final ε with Opacus (RDP and PRV,
  must match to 1e-6) and with dp-accounting's PLD accountant (must agree with PRV within 2%).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmfed.errors import MMFedError
from mmfed.privacy import accounting, ledger, site_keys
from mmfed.privacy.budget import BUDGET, BUDGETS, LEDGER, ledger_history
from mmfed.privacy.key_rotation import first_public_key
from mmfed.privacy.policy import POLICY_FILE, load_policy

SITE_WIDE = "site"  # DataBudget.fingerprint of the one budget of a site
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


@dataclass
class SiteAudit:
    site: str
    ledger: str
    key_source: str
    key_id: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # failed checks: each names the entry
    notes: list[str] = field(default_factory=list)
    budgets: list[DataBudget] = field(default_factory=list)
    chain: list[dict[str, Any]] = field(default_factory=list)  # every entry, key rotations included

    @property
    def ok(self) -> bool:
        return not self.problems and not any(b.over_cap for b in self.budgets)


def find_ledgers(paths: list[Path]) -> list[tuple[Path, Path | None]]:
    """(ledger file, site home or None) for each argument: a ledger, a site home, or a folder of homes."""
    found: list[tuple[Path, Path | None]] = []
    for path in paths:
        if path.is_file():
            home = path.parent.parent if path.parent.name == "state" else None
            found.append((path, home))
        elif (path / LEDGER).is_file() or (path / POLICY_FILE).is_file():  # a site that released nothing yet
            found.append((path / LEDGER, path))
        elif path.is_dir():
            homes = sorted(p for p in path.iterdir() if (p / LEDGER).is_file())
            if not homes:
                raise MMFedError(f"{path}: no ledger here ({LEDGER}) nor in its subfolders")
            found.extend((home / LEDGER, home) for home in homes)
        else:
            raise MMFedError(f"{path}: no such ledger file or site directory")
    return found


def audit_ledger(
    path: Path, home: Path | None, public_key: Path | None = None, thorough: bool = False
) -> SiteAudit:
    key_path = public_key or (home / site_keys.PUBLIC_KEY if home else None)
    if key_path is None or not key_path.exists():
        raise MMFedError(
            f"{path}: no public key to verify it with; pass --public-key FILE (the site's "
            f"{site_keys.PUBLIC_KEY}, obtained from the site out of band)"
        )
    public = site_keys.load_public_key(key_path)
    lines = ledger.read_lines(path)
    if home and public_key is None and lines:
        public = first_public_key(home, lines, public)  # after a rotation: the key that signed entry 0
    result = SiteAudit(
        site=home.name if home else path.stem,
        ledger=str(path),
        key_source=str(key_path),
        key_id=site_keys.key_id(public),
    )
    # every signature, always: a chain re-hashed after an edit still ends in a valid last signature when
    # the key that signed it is not the site's original (which key_id then names) — and it costs little
    entries, problem = ledger.verify(lines, public, every_signature=True)
    result.chain = entries
    result.entries = [e for e in entries if e.get("kind") != ledger.ROTATION]
    if problem:
        result.problems.append(f"{path}: {problem}")
        return result  # ε of a broken ledger means nothing: fix or restore it first
    for e in entries:
        if e.get("kind") == ledger.ROTATION:
            how = (
                "the previous key was LOST; this entry is signed by the new key itself, so nothing links "
                "it to the key you were given"
                if e.get("lost_previous_key")
                else "announced by the previous key"
            )
            result.notes.append(f"{_line(path, e)}: signing key rotated to {e['new_key_id']} ({how})")
    entries = result.entries  # the releases (result.chain: every entry, for anchors)
    if entries:
        result.site = str(entries[-1].get("site", result.site))
    cap_file = load_policy(home / POLICY_FILE).max_epsilon if home and (home / POLICY_FILE).exists() else None
    if not entries:
        if home and (home / BUDGET).exists():  # an emptied ledger where the site has released before
            _compare_accountant_state(result, home, result.chain, {})
        return result
    # entries written before one budget per site recorded ε per data fingerprint: checked in that scope
    legacy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry.get("budget") != "site":
            legacy[entry["data_fingerprint"]].append(entry)
    for fingerprint, group in legacy.items():
        _recompute(result, path, fingerprint, group, group, cap_file, thorough=False)
    # the site's budget: every release, whatever the data version, against one cap
    site_scoped = [e for e in entries if e.get("budget") == "site"]
    first = len(entries) - len(site_scoped)
    if len(legacy) == 1 and all(e.get("budget") != "site" for e in entries[:first]):
        site_scoped = entries  # one data version before the change: its ε was the site's ε
    result.budgets.append(_recompute(result, path, SITE_WIDE, entries, site_scoped, cap_file, thorough))
    if home:
        _compare_accountant_state(result, home, result.chain, legacy)
    return result


def _line(path: Path, entry: dict[str, Any]) -> str:
    if entry.get("kind") == ledger.ROTATION:
        return f"{path}: line {entry['index'] + 1} (entry {entry['index']}, key rotation)"
    where = f"entry {entry['index']}, run {entry['run_id'][:8]}, round {entry['round']}"
    return f"{path}: line {entry['index'] + 1} ({where})"


_RDP_CACHE: dict[tuple[float, float, tuple], np.ndarray] = {}


def _rdp_curve(sigma: float, q: float, orders: tuple) -> np.ndarray:
    """dp-accounting's per-step RDP of the Poisson-subsampled Gaussian at `orders`."""
    key = (sigma, q, orders)
    if key not in _RDP_CACHE:
        from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian

        _RDP_CACHE[key] = np.asarray(
            _compute_rdp_poisson_subsampled_gaussian(q, sigma, np.asarray(orders, dtype=float)), dtype=float
        )
    return _RDP_CACHE[key]


def _recompute(
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
    deltas = {e["delta"] for e in group}
    delta = group[-1]["delta"]
    if len(deltas) > 1:  # the site changed its policy's δ: each entry is checked at its own δ
        result.notes.append(f"data {fingerprint[:19]}: entries use different δ {sorted(deltas)}")
    large = [e for e in group if e.get("public_examples") and e["delta"] * e["public_examples"] >= 1]
    if large:  # δ ≥ 1/n allows releasing a record outright: the site's plan refuses it; flag old entries
        e = large[0]
        result.problems.append(
            f"{_line(path, e)}: δ={e['delta']:g} is not below 1/{e['public_examples']} (1 / the public size)"
        )
    orders = tuple(group[0].get("accountant", {}).get("rdp", {}).get("orders", accounting.RDP_ORDERS))
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
    recomputed = np.nanmin(eps_all, axis=1)
    mine = {id(e) for e in recorded_here}
    here = np.asarray([id(e) in mine for e in group])
    recorded_rdp = np.asarray([e["epsilon_rdp"] for e in group])
    recorded_prv = np.asarray([e["epsilon_prv"] for e in group])
    bad = np.flatnonzero(here & (np.abs(recorded_rdp - recomputed) > SAME * np.maximum(recomputed, 1e-12)))
    if bad.size:
        e = group[bad[0]]
        result.problems.append(
            f"{_line(path, e)}: epsilon_rdp {e['epsilon_rdp']:.6g} recorded, {recomputed[bad[0]]:.6g} "
            "recomputed from the history"
        )
    for name, values in (("epsilon_prv", recorded_prv[here]), ("epsilon_rdp", recorded_rdp[here])):
        drops = np.flatnonzero(np.diff(values) < 0)
        if drops.size:
            later = [e for e in group if id(e) in mine][drops[0] + 1]
            result.problems.append(f"{_line(path, later)}: cumulative {name} decreased")
    above = np.flatnonzero(here & (recorded_prv > recomputed + accounting.PRV_EPS_ERROR))
    if above.size:
        e = group[above[0]]
        result.problems.append(
            f"{_line(path, e)}: epsilon_prv {e['epsilon_prv']:.6g} is above its RDP bound "
            f"{recomputed[above[0]]:.6g}"
        )
    final_google = _google_rdp(cumulative[-1], orders, delta)
    checks = {"rdp_dp_accounting": final_google}
    history = ledger_history(group)
    if not here[-1]:  # the last entry recorded a per-data ε: the site's total is recomputed, not read
        return _budget(fingerprint, group, float(accounting.epsilon_prv(history, delta)),
                       float(recomputed[-1]), delta, cap_file, checks)  # fmt: skip
    if abs(final_google - recorded_rdp[-1]) > INDEPENDENT_RDP * recorded_rdp[-1]:
        result.problems.append(
            f"{_line(path, group[-1])}: epsilon_rdp {recorded_rdp[-1]:.6g} disagrees with dp-accounting's "
            f"{final_google:.6g} by more than {INDEPENDENT_RDP:.0%}"
        )
    if thorough:
        prv = accounting.epsilon_prv(history, delta)
        pld = _google_pld(history, delta)
        checks.update(
            rdp_opacus=accounting.epsilon_rdp(history, delta), prv_opacus=prv, pld_dp_accounting=pld
        )
        if abs(checks["rdp_opacus"] - recorded_rdp[-1]) > SAME * recorded_rdp[-1]:
            result.problems.append(
                f"{_line(path, group[-1])}: epsilon_rdp {recorded_rdp[-1]:.6g} recorded, Opacus gives "
                f"{checks['rdp_opacus']:.6g}"
            )
        if abs(prv - recorded_prv[-1]) > SAME * max(prv, 1e-12):
            result.problems.append(
                f"{_line(path, group[-1])}: epsilon_prv {recorded_prv[-1]:.6g} recorded, {prv:.6g} recomputed"
            )
        if abs(pld - recorded_prv[-1]) > INDEPENDENT_PRV * recorded_prv[-1]:
            result.problems.append(
                f"{_line(path, group[-1])}: epsilon_prv {recorded_prv[-1]:.6g} disagrees with "
                "dp-accounting's "
                f"PLD {pld:.6g} by more than {INDEPENDENT_PRV:.0%}"
            )
    return _budget(
        fingerprint, group, float(recorded_prv[-1]), float(recorded_rdp[-1]), delta, cap_file, checks
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
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    return float(compute_epsilon(np.asarray(orders, dtype=float), total, delta)[0])


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


def _compare_accountant_state(
    result: SiteAudit, home: Path, entries: list[dict[str, Any]], legacy: dict[str, list[dict[str, Any]]]
) -> None:
    """The site's persisted accountant must hold exactly the ledger's history: state/budget.json (one
    budget per site), or, for a site from before it, one state/budget/<fingerprint>.json per data."""
    import json

    releases = sum(e.get("kind") != ledger.ROTATION for e in entries)
    if (home / BUDGET).exists() or releases > sum(len(g) for g in legacy.values()):
        states = [(home / BUDGET, entries)]
    else:
        states = [(home / BUDGETS / f"{fp.replace(':', '-')}.json", group) for fp, group in legacy.items()]
    for state_path, group in states:
        history = ledger_history(group)
        if not state_path.exists():
            result.problems.append(f"{state_path}: accountant state missing ({len(group)} ledger entries)")
            continue
        try:
            state = json.loads(state_path.read_text())
            saved = accounting.compact(tuple(h) for h in state["accountant"]["history"])
        except (ValueError, KeyError, TypeError):
            result.problems.append(f"{state_path}: accountant state unreadable")
            continue
        head = state.get("ledger_head") if state_path.name == BUDGET.rsplit("/", 1)[-1] else None
        if head and head.get("index", -1) >= len(entries):
            result.problems.append(
                f"{state_path}: the site released up to entry {head['index']} but the ledger has "
                f"{len(entries)} entries: it was truncated or rolled back"
            )
        elif head and saved != history and saved == ledger_history(group[: head["index"] + 1]):
            result.notes.append(
                f"{state_path}: entries {head['index'] + 1}..{len(entries) - 1} are past the site's saved "
                "state (a release whose state was not saved, e.g. a crash): the site takes them in next round"
            )
        elif saved != history:
            delta = next(e["delta"] for e in reversed(group) if "delta" in e)
            spent = accounting.epsilon_rdp(saved, delta) if saved else 0.0
            result.problems.append(
                f"{state_path}: accountant history differs from the ledger's (accountant: "
                f"{sum(s for *_, s in saved)} steps, ε_RDP {spent:.4g}; "
                f"ledger: {sum(s for *_, s in history)} steps)"
            )


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def check_anchors(audits: list[SiteAudit], run_dirs: list[Path]) -> int:
    """Every ledger head a server recorded (RUN_DIR/anchors.jsonl) must still be in that site's ledger,
    byte for byte: a site whose ledger lost one was rolled back or truncated after releasing it. Adds a
    problem naming the site, run and round to that site's audit (or a new failed one); returns the number
    of anchors checked."""
    import json

    from mmfed.server.rundir import ANCHORS

    by_site = {a.site: a for a in audits}
    checked = 0
    for run_dir in run_dirs:
        path = Path(run_dir) / ANCHORS
        if not path.is_file():
            raise MMFedError(f"{run_dir}: no {ANCHORS} here; give the run directory of a federated run")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                site, index, expected = str(row["site"]), int(row["index"]), str(row["hash"])
            except (ValueError, KeyError, TypeError):
                raise MMFedError(f"{path}, line {number}: not an anchor row") from None
            checked += 1
            where = f"run {str(row.get('run_id', '?'))[:8]} round {row.get('round', '?')}"
            target = by_site.get(site)
            if target is None:
                target = SiteAudit(site=site, ledger="(not given)", key_source="-", key_id="-")
                target.problems.append(f"{path}: the server anchored site {site}'s ledger ({where}) "
                                       "but no ledger of that site was audited")  # fmt: skip
                audits.append(target)
                by_site[site] = target
                continue
            entries = target.chain
            if index >= len(entries):
                target.problems.append(
                    f"{target.ledger}: the server anchored entry {index} ({where}) but the ledger has "
                    f"{len(entries)} entries: it was truncated or rolled back after that release"
                )
            elif ledger.line_hash(ledger.canonical(entries[index])) != expected:
                target.problems.append(
                    f"{target.ledger}: entry {index} is not the one the server anchored ({where}): "
                    "the ledger was rewritten after that release"
                )
    return checked
