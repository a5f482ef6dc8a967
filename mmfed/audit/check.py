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

import gc
import math
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfed.audit.epsilon import DataBudget, entry_line, recompute
from mmfed.errors import MMFedError
from mmfed.privacy import accounting, ledger, site_keys
from mmfed.privacy.budget_state import BUDGET, BUDGETS, LEDGER, ledger_history
from mmfed.privacy.key_rotation import first_public_key
from mmfed.privacy.policy import POLICY_FILE, load_policy

SITE_WIDE = "site"  # DataBudget.fingerprint of the one budget of a site


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
    collecting = gc.isenabled()
    gc.disable()  # the collector would rescan what the audit builds while it builds it
    try:
        result = _audit_ledger(path, home, public_key, thorough)
    finally:
        if collecting:
            gc.enable()
    _out_of_collector(result)
    return result


def _out_of_collector(result: SiteAudit) -> None:
    """Move what the audit built out of the cyclic garbage collector's view until `result` is dropped.
    It builds ~10 long-lived containers per ledger entry and no reference cycles; left in, every
    collection of the oldest generation rescans them all, again for each ledger audited after (at
    100,000 entries: as long as parsing them). `gc.freeze` covers every object alive now, so the
    collector takes them all back (`gc.unfreeze`) when `result` goes: nothing else stays out of it after
    the audit (a cycle that became garbage meanwhile is collected then)."""
    gc.freeze()
    weakref.finalize(result, gc.unfreeze)


def _audit_ledger(path: Path, home: Path | None, public_key: Path | None, thorough: bool) -> SiteAudit:
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
            result.notes.append(f"{entry_line(path, e)}: signing key rotated to {e['new_key_id']} ({how})")
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
        recompute(result, path, fingerprint, group, group, cap_file, thorough=False)
    # the site's budget: every release, whatever the data version, against one cap
    site_scoped = [e for e in entries if e.get("budget") == "site"]
    first = len(entries) - len(site_scoped)
    if len(legacy) == 1 and all(e.get("budget") != "site" for e in entries[:first]):
        site_scoped = entries  # one data version before the change: its ε was the site's ε
    result.budgets.append(recompute(result, path, SITE_WIDE, entries, site_scoped, cap_file, thorough))
    if home:
        _compare_accountant_state(result, home, result.chain, legacy)
    return result


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


def audit_run(
    state_dir: Path, run_dir: Path | None = None, thorough: bool = True
) -> tuple[list[SiteAudit], int]:
    """What `mmfed audit STATE_DIR --anchors RUN_DIR [--thorough]` checks, for `mmfed simulate` to print
    after a private run: every site home under `state_dir` that has a ledger, and the server's anchors
    of `run_dir` (when it wrote any). Returns the audits and the number of anchors checked."""
    from mmfed.server.rundir import ANCHORS

    audits = [audit_ledger(path, home, None, thorough) for path, home in find_ledgers([Path(state_dir)])]
    anchors = 0
    if run_dir is not None and (Path(run_dir) / ANCHORS).is_file():
        anchors = check_anchors(audits, [Path(run_dir)])
    return audits, anchors
