"""A site's privacy budget: its policy, its persistent accountant, its ledger — and the per-round guard.

Layout of a site's home (its site directory when deployed, `--state-dir/<site>` in simulation):

    site.toml                      policy (owned by the site)
    keys/ledger-signing.pem        Ed25519 private key, mode 0600
    keys/ledger-signing.pub.pem    public key, for auditors
    state/budget/<fingerprint>.json  Opacus accountant state (history of σ, sample rate, steps)
    state/ledger.jsonl             signed, hash-chained ledger of every released update

A round: `plan()` (refuses with the reason when the proposal breaks the policy or the budget) → train →
`release()` (saves the accountant, appends the ledger entry; only then may the update leave the site).
Hold `exclusive()` around all three, so two processes never spend the same budget twice.

The rules of `plan()` live in mmfed.privacy.round_plan, the state and its checks against the ledger in
mmfed.privacy.budget_state, the refusals in mmfed.privacy.refusals; their public names are importable
from here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmfed.errors import MMFedError
from mmfed.privacy import accounting, ledger, site_keys
from mmfed.privacy.accounting import History
from mmfed.privacy.budget_state import BUDGET, BUDGETS, LEDGER, BudgetState, ledger_history
from mmfed.privacy.fingerprint import keyed
from mmfed.privacy.policy import POLICY_FILE, SitePolicy, load_policy
from mmfed.privacy.refusals import REFUSALS, LedgerRefusal, Refusal
from mmfed.privacy.round_plan import (
    Proposal,
    RoundPlan,
    check_proposal,
    dp_geometry,
    plan_cap,
    within_budget,
)

__all__ = [
    "BUDGET",
    "BUDGETS",
    "LEDGER",
    "REFUSALS",
    "LedgerRefusal",
    "Proposal",
    "Refusal",
    "RoundPlan",
    "SiteBudget",
    "dp_geometry",
    "ledger_history",
    "plan_cap",
]


class SiteBudget:
    def __init__(
        self, home: str | Path, fingerprint: str, *, site: str, simulated_policy: SitePolicy | None = None
    ):
        """`simulated_policy` is used when `home` has no site.toml (simulation only); a deployed site
        must have its own policy and key (`mmfed site init`)."""
        self.home = Path(home)
        self.site = site
        self.fingerprint = fingerprint
        policy_path = self.home / POLICY_FILE
        if policy_path.exists() or simulated_policy is None:
            self.policy = load_policy(policy_path)
        else:
            self.policy = simulated_policy
        if simulated_policy is not None and not (self.home / site_keys.PRIVATE_KEY).exists():
            self.home.mkdir(parents=True, exist_ok=True)
            with ledger.locked(self.home / site_keys.PRIVATE_KEY):  # parallel simulation workers
                if not (self.home / site_keys.PRIVATE_KEY).exists():
                    site_keys.create_key(self.home)
        self.key = site_keys.load_private_key(self.home)
        if not fingerprint.startswith("hmac-"):  # what the ledger records: keyed (see fingerprint.py)
            self.fingerprint = keyed(fingerprint, site_keys.fingerprint_secret(self.key))
        self.state = BudgetState(self.home, self.site, self.key)
        self.ledger_path = self.state.ledger_path
        self.budget_path = self.state.budget_path

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with ledger.locked(self.ledger_path):
            yield

    # -- the accountant's state: rebuilt from the verified ledger (mmfed.privacy.budget_state) -------
    def history(self) -> History:
        """The site's whole history — every release, whatever the data version — read from its ledger
        after verifying it, and checked against the accountant state saved with the last release.
        Anything that does not add up is refused, naming both sides: a budget is never reset."""
        return self.state.history(self.policy.delta)

    def check_anchor(self, anchor: str) -> None:
        """`anchor` ("INDEX:HASH"): the last head of this site's ledger the server recorded. A ledger that
        does not hold it was rolled back or truncated (e.g. a backup restored with its state): refused."""
        self.state.check_anchor(anchor)

    def spent(self) -> tuple[float, float]:
        """(ε PRV, ε RDP) the site has spent so far, over every release, at the policy's δ."""
        history = self.history()
        return accounting.epsilon_prv(history, self.policy.delta), accounting.epsilon_rdp(
            history, self.policy.delta
        )

    # -- the guard (its rules: mmfed.privacy.round_plan) --------------------------------------------
    def plan(self, proposal: Proposal, public_examples: int) -> RoundPlan:
        """This round's DP parameters, or Refusal naming the rule the proposal breaks. Everything here is a
        function of the proposal, the policy, the history and the public size: never of the records."""
        if (self.home / POLICY_FILE).exists():  # re-read every round: the site may tighten it any time
            self.policy = load_policy(self.home / POLICY_FILE)
        sigma, geometry = check_proposal(self.policy, self.site, proposal, public_examples)
        # the history (and its checks against the ledger) only once the proposal passes the policy
        return within_budget(self.policy, self.site, proposal, sigma, geometry, self.history())

    def release(
        self, plan: RoundPlan, history_after: History, *, run_id: str, round: int, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """Persist the accountant and sign the ledger entry; the update may leave the site only after."""
        expected = accounting.compact([*plan.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)])
        if accounting.compact(history_after) != expected:
            raise MMFedError(
                f"site {self.site}: the accountant recorded {history_after}, not the planned {expected}; "
                "the update is withheld"
            )
        entry = ledger.append(self.ledger_path, self.key, self._entry_fields(plan, run_id, round, extra))
        # the ledger first (the source of truth), then the state that remembers it; a crash in between
        # leaves one verified entry past the high-water mark, which history() takes in
        head = {"index": entry["index"], "hash": ledger.line_hash(ledger.canonical(entry))}
        self.state.save(expected, head, self.policy.delta)
        return entry

    def _entry_fields(
        self, plan: RoundPlan, run_id: str, round: int, extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "round": round,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "site": self.site,
            "data_fingerprint": self.fingerprint,
            "budget": "site",  # ε is over every release of the site, whatever the data version
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps,
            "max_grad_norm": plan.max_grad_norm,
            "public_examples": plan.geometry.public_examples,
            "delta": plan.delta,
            "epsilon_prv": plan.epsilon_prv,
            "epsilon_rdp": plan.epsilon_rdp,
            "max_epsilon": plan_cap(self.policy),
            "accountant": {
                "prv": {"eps_error": accounting.PRV_EPS_ERROR},
                "rdp": {"orders": list(accounting.RDP_ORDERS)},
            },
            **extra,
        }
