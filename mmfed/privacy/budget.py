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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmfed.errors import MMFedError
from mmfed.files import write_atomic
from mmfed.privacy import accounting, ledger, site_keys
from mmfed.privacy.accounting import History
from mmfed.privacy.fingerprint import keyed
from mmfed.privacy.geometry import Geometry
from mmfed.privacy.key_rotation import first_public_key
from mmfed.privacy.policy import POLICY_FILE, SitePolicy, load_policy

LEDGER = site_keys.LEDGER_FILE
BUDGET = "state/budget.json"  # the one accountant state of the site (+ its ledger high-water mark)
BUDGETS = "state/budget"  # before one budget per site: one accountant file per data fingerprint


class Refusal(MMFedError):
    """The site declines this round. The message (which may name the site's own numbers) goes to the site's
    log; the server gets only `code` and its generic sentence (REFUSALS)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class LedgerRefusal(Refusal):
    """The site's ledger and accountant state do not add up: it trains no more until its operator acts."""

    def __init__(self, message: str):
        super().__init__("ledger", message)


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
    "model": "the run's model is not one this site approved (approved_models in its site.toml)",
    "secure-aggregation": "this train message is not SecAgg+ (the run announced it, or the site requires it)",
    "held-modalities": "this site declares no held_modalities in its site.toml",
    "public-size": "this site declares no public size (privacy.public_examples in its site.toml)",
    "ledger": "the site's ledger and accountant state do not add up; it trains no more until resolved",
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


def ledger_history(entries: list[dict[str, Any]]) -> History:
    """The accountant history the ledger entries record: (σ, sample rate, steps) of each release, in order
    (key rotations release nothing)."""
    return accounting.compact(
        (e["noise_multiplier"], e["sample_rate"], e["steps"])
        for e in entries
        if e.get("kind") != ledger.ROTATION
    )


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
        self.ledger_path = self.home / LEDGER
        self.budget_path = self.home / BUDGET

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with ledger.locked(self.ledger_path):
            yield

    # -- the accountant's state: rebuilt from the verified ledger ----------------------------------
    def history(self) -> History:
        """The site's whole history — every release, whatever the data version — read from its ledger
        after verifying it, and checked against the accountant state saved with the last release.
        Anything that does not add up is refused, naming both sides: a budget is never reset."""
        lines = ledger.read_lines(self.ledger_path)
        state = self._state()
        head = state.get("ledger_head") if state else None
        if state is None and lines:
            state = self._migrate(lines)  # a site from before one budget per site
            head = state["ledger_head"]
        if state is not None and not lines and (head or state["history"]):
            raise LedgerRefusal(
                f"{self.ledger_path} is missing or empty, but {self.budget_path} records "
                f"{sum(s for *_, s in state['history'])} steps released up to entry "
                f"{head['index'] if head else '?'}; a restored or emptied ledger never re-grants budget — "
                "put back the ledger that matches it"
            )
        entries = self._verify(lines, head)
        past = len(entries) - (head["index"] + 1 if head else 0)
        if state is not None and past > 1:  # one is a release whose state write a crash cut off
            raise LedgerRefusal(
                f"{self.ledger_path} has {past} entries past the last release {self.budget_path} records "
                f"(entry {head['index'] if head else 'none'}): the accountant state was replaced or rolled "
                "back; restore the state that matches the ledger"
            )
        from_ledger = ledger_history(entries)
        if state is not None:
            upto = head["index"] + 1 if head else 0
            saved = accounting.compact(tuple(h) for h in state["history"])
            covered = ledger_history(entries[:upto])
            if saved != covered:
                raise LedgerRefusal(
                    f"{self.budget_path} holds {sum(s for *_, s in saved)} steps "
                    f"(ε {accounting.epsilon_rdp(saved, self.policy.delta) if saved else 0:.4g} RDP) but "
                    f"{self.ledger_path} up to entry {upto - 1} holds {sum(s for *_, s in covered)} steps "
                    f"(ε {accounting.epsilon_rdp(covered, self.policy.delta) if covered else 0:.4g} RDP): "
                    "the accountant state was replaced or edited; restore the matching pair from backup"
                )
        return from_ledger

    def check_anchor(self, anchor: str) -> None:
        """`anchor` ("INDEX:HASH"): the last head of this site's ledger the server recorded. A ledger that
        does not hold it was rolled back or truncated (e.g. a backup restored with its state): refused."""
        if not anchor:
            return
        try:
            index_text, expected = anchor.split(":", 1)
            index = int(index_text)
        except ValueError:
            raise LedgerRefusal(f"the server sent a malformed ledger anchor {anchor[:80]!r}") from None
        lines = ledger.read_lines(self.ledger_path)
        if index >= len(lines) or ledger.line_hash(lines[index]) != expected:
            have = f"{len(lines)} entries" if index >= len(lines) else f"another entry {index}"
            raise LedgerRefusal(
                f"the server recorded this site's ledger head at entry {index} (hash {expected[:12]}…), but "
                f"{self.ledger_path} has {have}: the ledger was rolled back or truncated (e.g. restored from "
                "a backup); a released budget is never un-spent — put back the ledger that holds that entry"
            )

    def _verify(self, lines: list[bytes], head: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The ledger's entries: the whole chain checked (cheap hashes), the entry at the site's own
        high-water mark unchanged, and every signature after it verified with the site's key."""
        if head is not None:
            if len(lines) <= head["index"]:
                raise LedgerRefusal(
                    f"{self.ledger_path} has {len(lines)} entries but this site has released up to entry "
                    f"{head['index']}: the ledger was truncated or rolled back; it trains no more until the "
                    "ledger that matches its state is back (a released budget is never un-spent)"
                )
            if ledger.line_hash(lines[head["index"]]) != head["hash"]:
                raise LedgerRefusal(
                    f"{self.ledger_path}: entry {head['index']} is not the one this site wrote (hash "
                    f"{head['hash'][:12]}…): the ledger was edited or replaced"
                )
        public = self.key.public_key()
        entries, problem = ledger.verify(lines, first_public_key(self.home, lines, public))
        start = head["index"] + 1 if head else 0
        problem = problem or next(
            (
                ledger.Problem(i + 1, f"entry {e['index']}: signature does not verify with the site's key")
                for i, e in enumerate(entries[start:], start)
                if e["key_id"] != site_keys.key_id(public) or not ledger.signature_ok(e, public)
            ),
            None,
        )
        if problem:
            raise LedgerRefusal(f"{self.ledger_path}: {problem}; run `mmfed audit` on this site")
        return entries

    def _state(self) -> dict[str, Any] | None:
        if not self.budget_path.exists():
            return None
        try:
            state = json.loads(self.budget_path.read_text())
            if state["accountant"]["mechanism"] != "prv":
                raise ValueError("another accountant")
            history = [tuple(h) for h in state["accountant"]["history"]]
            head = state["ledger_head"]
            if head is not None and not (isinstance(head["index"], int) and isinstance(head["hash"], str)):
                raise ValueError("bad ledger head")
            return {"history": history, "ledger_head": head}
        except (ValueError, KeyError, TypeError):
            raise LedgerRefusal(
                f"{self.budget_path}: the site's accountant state is unreadable; it is never reset "
                "automatically — restore it from backup"
            ) from None

    def _migrate(self, lines: list[bytes]) -> dict[str, Any]:
        """A ledger without `state/budget.json`: a site from before one budget per site keeps one
        accountant file per data fingerprint (state/budget/). Each must match its entries of the ledger;
        then they are composed — in ledger order, never dropped — into the one budget."""
        entries = self._verify(lines, None)
        releases = [e for e in entries if e.get("kind") != ledger.ROTATION]
        one_budget = [e for e in releases if e.get("budget") == "site"]
        # the state of the one budget is written right after the ledger: only a crash between the two
        # writes of the site's very first release leaves one such entry without it
        if len(one_budget) > 1 or (one_budget and one_budget[-1] is not releases[-1]):
            raise LedgerRefusal(
                f"{self.budget_path} is missing but {self.ledger_path} records {len(one_budget)} releases "
                "of the site's budget: a budget is never reset — restore the file from backup"
            )
        by_fingerprint: dict[str, list[dict[str, Any]]] = {}
        for e in releases:
            if e.get("budget") != "site":
                by_fingerprint.setdefault(e["data_fingerprint"], []).append(e)
        for fingerprint, group in by_fingerprint.items():
            legacy = self.home / BUDGETS / f"{fingerprint.replace(':', '-')}.json"
            try:
                saved = accounting.compact(
                    tuple(h) for h in json.loads(legacy.read_text())["accountant"]["history"]
                )
            except (OSError, ValueError, KeyError, TypeError):
                raise LedgerRefusal(
                    f"{self.ledger_path} records releases on data {fingerprint[:19]}, but {legacy} (its "
                    "accountant state) is missing or unreadable: a budget is never reset — restore it "
                    "from backup"
                ) from None
            if saved != ledger_history(group):
                raise LedgerRefusal(
                    f"{legacy} does not match the ledger's entries for that data: restore both"
                )
        history = ledger_history(entries)
        head = {"index": len(lines) - 1, "hash": ledger.line_hash(lines[-1])}
        self._save(history, head)
        return {"history": history, "ledger_head": head}

    def _save(self, history: History, head: dict[str, Any] | None) -> None:
        self.budget_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "site": self.site,
            "delta": self.policy.delta,
            "accountant": {"mechanism": "prv", "history": [list(h) for h in history]},
            # the site's high-water mark: the last entry it wrote (a shorter ledger is refused)
            "ledger_head": head,
        }
        write_atomic(self.budget_path, json.dumps(state, indent=1))

    def spent(self) -> tuple[float, float]:
        """(ε PRV, ε RDP) the site has spent so far, over every release, at the policy's δ."""
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
        fields = {
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
        entry = ledger.append(self.ledger_path, self.key, fields)
        # the ledger first (the source of truth), then the state that remembers it; a crash in between
        # leaves one verified entry past the high-water mark, which history() takes in
        self._save(expected, {"index": entry["index"], "hash": ledger.line_hash(ledger.canonical(entry))})
        return entry


def plan_cap(policy: SitePolicy) -> float | None:
    return policy.max_epsilon if math.isfinite(policy.max_epsilon) else None
