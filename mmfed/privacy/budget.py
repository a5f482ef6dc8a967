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
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmfed.errors import MMFedError
from mmfed.privacy import accounting, keys, ledger
from mmfed.privacy.accounting import History
from mmfed.privacy.policy import POLICY_FILE, SitePolicy, load_policy

LEDGER = "state/ledger.jsonl"
BUDGETS = "state/budget"


class Refusal(MMFedError):
    """The site declines this round; the message is the reason, sent to the server and logged."""


@dataclass(frozen=True)
class Proposal:
    """What the server's run config asks of a site for one round."""

    noise_multiplier: float  # 0: derive it from target_epsilon
    target_epsilon: float  # 0: use noise_multiplier; both 0: no DP
    max_grad_norm: float
    batch_size: int
    local_epochs: int
    rounds: int  # planned rounds of the run: a target ε is spread over all of them
    modalities: tuple[str, ...]

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0 or self.target_epsilon > 0


@dataclass(frozen=True)
class RoundPlan:
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    history: History  # before this round
    epsilon_prv: float  # cumulative, after this round
    epsilon_rdp: float


def dp_geometry(records: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """(sample rate, steps per round) exactly as Opacus' DPDataLoader draws them: 1/len(loader) and
    len(loader) Poisson batches per epoch."""
    batches = max(math.ceil(records / batch_size), 1)
    return 1.0 / batches, batches * local_epochs


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
        if simulated_policy is not None and not (self.home / keys.PRIVATE_KEY).exists():
            self.home.mkdir(parents=True, exist_ok=True)
            with ledger.locked(self.home / keys.PRIVATE_KEY):  # parallel simulation workers
                if not (self.home / keys.PRIVATE_KEY).exists():
                    keys.create_key(self.home)
        self.key = keys.load_private_key(self.home)
        self.ledger_path = self.home / LEDGER
        self.budget_path = self.home / BUDGETS / f"{fingerprint.replace(':', '-')}.json"

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with ledger.locked(self.ledger_path):
            yield

    # -- the accountant's state --------------------------------------------------------------------
    def history(self) -> History:
        if not self.budget_path.exists():
            if self.fingerprint.encode() in (
                self.ledger_path.read_bytes() if self.ledger_path.exists() else b""
            ):
                raise MMFedError(
                    f"{self.budget_path}: the accountant state is missing, but {self.ledger_path} records "
                    "releases on this data; a budget is never reset — restore the file from backup"
                )
            return []
        try:
            state = json.loads(self.budget_path.read_text())
            if state["fingerprint"] != self.fingerprint or state["accountant"]["mechanism"] != "prv":
                raise ValueError("another data fingerprint or accountant")
            return accounting.compact(tuple(h) for h in state["accountant"]["history"])
        except (ValueError, KeyError, TypeError):
            raise MMFedError(
                f"{self.budget_path}: the site's accountant state is unreadable or not this data's; "
                "it is never reset automatically — restore it from backup (the ledger records every release)"
            ) from None

    def _save_history(self, history: History) -> None:
        self.budget_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "fingerprint": self.fingerprint,
            "delta": self.policy.delta,
            "accountant": {"mechanism": "prv", "history": [list(h) for h in history]},
        }
        tmp = self.budget_path.with_name(self.budget_path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.budget_path)

    def spent(self) -> tuple[float, float]:
        """(ε PRV, ε RDP) spent so far on this data, at the policy's δ."""
        history = self.history()
        return accounting.epsilon_prv(history, self.policy.delta), accounting.epsilon_rdp(
            history, self.policy.delta
        )

    # -- the guard ---------------------------------------------------------------------------------
    def plan(self, proposal: Proposal, records: int) -> RoundPlan:
        """This round's DP parameters, or Refusal naming the rule the proposal breaks."""
        if (self.home / POLICY_FILE).exists():  # re-read every round: the site may tighten it any time
            self.policy = load_policy(self.home / POLICY_FILE)
        p = self.policy
        name = f"site {self.site}"
        cap = f"max_epsilon={p.max_epsilon:g}" if math.isfinite(p.max_epsilon) else ""
        if not proposal.private:
            if math.isfinite(p.max_epsilon):
                raise Refusal(
                    f"{name}: the run proposes no differential privacy; this site's policy caps ε ({cap})"
                )
            raise Refusal(f"{name}: the run proposes no differential privacy")
        outside = sorted(set(proposal.modalities) - set(p.allowed_modalities))
        if outside:
            raise Refusal(
                f"{name}: modalities {outside} are not in this site's allowed_modalities "
                f"{list(p.allowed_modalities)}"
            )
        if proposal.max_grad_norm > p.max_clipping_norm:
            raise Refusal(
                f"{name}: clipping norm {proposal.max_grad_norm:g} is above "
                f"max_clipping_norm={p.max_clipping_norm:g}"
            )
        sample_rate, steps = dp_geometry(records, proposal.batch_size, proposal.local_epochs)
        if sample_rate > p.max_sample_rate:
            raise Refusal(
                f"{name}: batch size {proposal.batch_size} over {records} training records samples "
                f"{sample_rate:.3g} of them per step, above max_sample_rate={p.max_sample_rate:g}; "
                "propose a smaller batch size"
            )
        if proposal.noise_multiplier > 0:
            sigma = proposal.noise_multiplier
        else:
            sigma = accounting.noise_for_target(
                proposal.target_epsilon, p.delta, sample_rate, steps * proposal.rounds
            )
        if sigma < p.min_noise_multiplier:
            raise Refusal(
                f"{name}: noise multiplier {sigma:.4g} is below "
                f"min_noise_multiplier={p.min_noise_multiplier:g}"
            )
        before = self.history()
        after = accounting.compact([*before, (sigma, sample_rate, steps)])
        eps_prv = accounting.epsilon_prv(after, p.delta)
        if eps_prv > p.max_epsilon:
            spent = accounting.epsilon_prv(before, p.delta)
            raise Refusal(
                f"{name}: this round would bring ε to {eps_prv:.3f} (PRV, δ={p.delta:g}), above {cap}; "
                f"spent so far {spent:.3f}, remaining {max(p.max_epsilon - spent, 0):.3f}"
            )
        return RoundPlan(
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps=steps,
            max_grad_norm=proposal.max_grad_norm,
            delta=p.delta,
            history=before,
            epsilon_prv=eps_prv,
            epsilon_rdp=accounting.epsilon_rdp(after, p.delta),
        )

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
        self._save_history(expected)
        fields = {
            "run_id": run_id,
            "round": round,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "site": self.site,
            "data_fingerprint": self.fingerprint,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps,
            "max_grad_norm": plan.max_grad_norm,
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
        return ledger.append(self.ledger_path, self.key, fields)


def plan_cap(policy: SitePolicy) -> float | None:
    return policy.max_epsilon if math.isfinite(policy.max_epsilon) else None
