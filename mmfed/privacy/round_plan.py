"""The per-round guard's rules: what a run proposes, the DP parameters a site derives from it, and the
refusal of every proposal that breaks the site's policy or budget.

Everything here is a function of the proposal, the policy, the history and the public size: never of the
records (mmfed.privacy.budget holds the state and the ledger it is checked against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmfed.privacy import accounting
from mmfed.privacy.accounting import History
from mmfed.privacy.geometry import Geometry
from mmfed.privacy.policy import SitePolicy
from mmfed.privacy.refusals import Refusal


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


def plan_cap(policy: SitePolicy) -> float | None:
    return policy.max_epsilon if math.isfinite(policy.max_epsilon) else None


def _cap_text(policy: SitePolicy) -> str:
    return f"max_epsilon={policy.max_epsilon:g}" if math.isfinite(policy.max_epsilon) else ""


def _check_settings(name: str, proposal: Proposal) -> None:
    # the server's numbers are checked here too: the site never relies on the server's validation
    for setting, value in (
        ("noise-multiplier", proposal.noise_multiplier),
        ("target-epsilon", proposal.target_epsilon),
        ("max-grad-norm", proposal.max_grad_norm),
    ):
        if not (math.isfinite(value) and value >= 0) or (setting == "max-grad-norm" and value == 0):
            raise Refusal("setting", f"{name}: the run proposes {setting}={value}; refused")


def check_proposal(
    policy: SitePolicy, site: str, proposal: Proposal, public_examples: int
) -> tuple[float, Geometry]:
    """(σ, geometry) of this round, or Refusal naming the policy rule the proposal breaks (the budget is
    checked next, by `within_budget`)."""
    p = policy
    name = f"site {site}"
    cap = _cap_text(p)
    _check_settings(name, proposal)
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
    return sigma, geometry


def within_budget(
    policy: SitePolicy, site: str, proposal: Proposal, sigma: float, geometry: Geometry, before: History
) -> RoundPlan:
    """The round's plan, given the site's history `before` it, or Refusal("budget") when it would take the
    site's cumulative ε (PRV) past the policy's max_epsilon."""
    p = policy
    name = f"site {site}"
    cap = _cap_text(p)
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
