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
from mmfed.privacy.geometry import Geometry
from mmfed.privacy.policy import POLICY_FILE, SitePolicy, load_policy

LEDGER = keys.LEDGER_FILE
BUDGETS = "state/budget"


class Refusal(MMFedError):
    """The site declines this round. The message (which may name the site's own numbers) goes to the site's
    log; the server gets only `code` and its generic sentence (REFUSALS)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


# what the server is told, per refusal code: which setting of the proposal to change, no site numbers
REFUSALS = {
    "no-dp": "the run proposes no differential privacy and this site's policy requires it",
    "modality": "the run trains a modality this site's policy does not allow",
    "clipping": "the proposed max-grad-norm is above this site's max_clipping_norm",
    "sample-rate": "the proposed batch size samples more than this site's max_sample_rate per step",
    "noise": "the proposed noise multiplier is below this site's min_noise_multiplier",
    "budget": "this round would take the site past its privacy budget (max_epsilon)",
    "delta": "this site's delta is not below 1 / its public size",
    "setting": "a proposed privacy setting is not a finite positive number",
    "secure-aggregation": "this train message is not SecAgg+ (the run announced it, or the site requires it)",
    "held-modalities": "this site declares no held_modalities in its site.toml",
    "public-size": "this site declares no public size (privacy.public_examples in its site.toml)",
    "evaluation": "this site does not evaluate this model (site policy)",
}


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
    geometry: Geometry
    max_grad_norm: float
    delta: float
    history: History  # before this round
    epsilon_prv: float  # cumulative, after this round
    epsilon_rdp: float

    @property
    def sample_rate(self) -> float:
        return self.geometry.sample_rate

    @property
    def steps(self) -> int:
        return self.geometry.steps


def dp_geometry(public_examples: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """(sample rate, steps per round) for a site of public size `public_examples` (mmfed.privacy.geometry)."""
    geometry = Geometry(public_examples, batch_size, local_epochs)
    return geometry.sample_rate, geometry.steps


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
    def plan(self, proposal: Proposal, public_examples: int) -> RoundPlan:
        """This round's DP parameters, or Refusal naming the rule the proposal breaks. Everything here is a
        function of the proposal, the policy, the history and the public size: never of the records."""
        if (self.home / POLICY_FILE).exists():  # re-read every round: the site may tighten it any time
            self.policy = load_policy(self.home / POLICY_FILE)
        p = self.policy
        name = f"site {self.site}"
        cap = f"max_epsilon={p.max_epsilon:g}" if math.isfinite(p.max_epsilon) else ""
        # the server's numbers are checked here too: the site never relies on the server's validation
        for setting, value in (
            ("noise-multiplier", proposal.noise_multiplier),
            ("target-epsilon", proposal.target_epsilon),
            ("max-grad-norm", proposal.max_grad_norm),
        ):
            if not (math.isfinite(value) and value >= 0) or (setting == "max-grad-norm" and value == 0):
                raise Refusal("setting", f"{name}: the run proposes {setting}={value}; refused")
        if not proposal.private:
            raise Refusal("no-dp", f"{name}: the run proposes no differential privacy" + (
                f"; this site's policy caps ε ({cap})" if cap else ""))  # fmt: skip
        outside = sorted(set(proposal.modalities) - set(p.allowed_modalities))
        if outside:
            raise Refusal("modality",
                f"{name}: modalities {outside} are not in this site's allowed_modalities "
                f"{list(p.allowed_modalities)}"
            )  # fmt: skip
        if proposal.max_grad_norm > p.max_clipping_norm:
            raise Refusal("clipping",
                f"{name}: clipping norm {proposal.max_grad_norm:g} is above "
                f"max_clipping_norm={p.max_clipping_norm:g}"
            )  # fmt: skip
        if not p.delta * public_examples < 1:
            raise Refusal("delta",
                f"{name}: δ={p.delta:g} is not below 1/{public_examples} (1 / the site's public size); "
                "a δ that large allows releasing a record outright: lower privacy.delta in site.toml"
            )  # fmt: skip
        geometry = Geometry(public_examples, proposal.batch_size, proposal.local_epochs)
        if geometry.sample_rate > p.max_sample_rate:
            raise Refusal("sample-rate",
                f"{name}: batch size {proposal.batch_size} over the public size {public_examples} samples "
                f"{geometry.sample_rate:.3g} of the records per step, above max_sample_rate="
                f"{p.max_sample_rate:g}; propose a smaller batch size"
            )  # fmt: skip
        if proposal.noise_multiplier > 0:
            sigma = proposal.noise_multiplier
        else:
            sigma = accounting.noise_for_target(
                proposal.target_epsilon, p.delta, geometry.sample_rate, geometry.steps * proposal.rounds
            )
        if sigma < p.min_noise_multiplier:
            raise Refusal("noise",
                f"{name}: noise multiplier {sigma:.4g} is below "
                f"min_noise_multiplier={p.min_noise_multiplier:g}"
            )  # fmt: skip
        before = self.history()
        after = accounting.compact([*before, (sigma, geometry.sample_rate, geometry.steps)])
        eps_prv = accounting.epsilon_prv(after, p.delta)
        if eps_prv > p.max_epsilon:
            spent = accounting.epsilon_prv(before, p.delta)
            raise Refusal("budget",
                f"{name}: this round would bring ε to {eps_prv:.3f} (PRV, δ={p.delta:g}), above {cap}; "
                f"spent so far {spent:.3f}, remaining {max(p.max_epsilon - spent, 0):.3f}"
            )  # fmt: skip
        return RoundPlan(
            noise_multiplier=sigma,
            geometry=geometry,
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
        return ledger.append(self.ledger_path, self.key, fields)


def plan_cap(policy: SitePolicy) -> float | None:
    return policy.max_epsilon if math.isfinite(policy.max_epsilon) else None
