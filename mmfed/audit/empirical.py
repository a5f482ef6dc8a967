"""`mmfed audit empirical`: a canary experiment at one site of a simulated federation run with the run's own
settings, its ε lower bound at 95% (mmfed.audit.empirical_bound) against the ε the site's ledger accounts.

The experiment never touches a real site's budget: it runs in a scratch run and state directory, on the
in-process grid (mmfed.server.local_grid). Two kinds of canaries: gradient canaries (white-box, for a
site's own operator: mmfed.audit.gradient_canaries at the DP step, scored from each step's privatized sum)
and input canaries (black-box: mmfed.audit.input_canaries, mislabelled public inputs in the site's training
data, scored by their loss drop between the initial and the final global model).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmfed.audit.empirical_bound import AuditBound, audit_bound
from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig

MODES = ("gradient", "input")


@dataclass
class EmpiricalAudit:
    """One canary experiment's result: what a report needs to show it, with its evidence."""

    site: str
    mode: str
    canaries: int
    included: int
    epsilon_lower: float  # ε̂ at `confidence`
    confidence: float
    power: float  # the largest ε̂ this design could show
    guesses: int
    correct: int
    grid: list[int]
    epsilon_accounted: float | None  # the site's ledger (PRV); None without DP
    delta: float
    rounds: int
    steps: int  # DP steps the canaries were inserted in (gradient mode)
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    control: str = ""  # a positive control's deliberate fault, "" for the mechanism as built

    @property
    def violation(self) -> bool:
        """ε̂ above the accounted ε: the mechanism leaks more than its ledger says (at `confidence`). A run
        without DP claims nothing, so it has nothing to violate."""
        return self.epsilon_accounted is not None and self.epsilon_lower > self.epsilon_accounted

    def verdict(self) -> str:
        if self.epsilon_accounted is None:
            return (
                f"no DP, nothing claimed: ε̂ = {self.epsilon_lower:.3f} at {self.confidence:.0%} is what this "
                f"design sees without noise (it could show at most {self.power:.3f})"
            )
        if self.violation:
            return (
                f"VIOLATION: ε̂ = {self.epsilon_lower:.3f} > accounted ε = {self.epsilon_accounted:.3f} "
                f"at {self.confidence:.0%} confidence"
            )
        return (
            f"no violation found: ε̂ = {self.epsilon_lower:.3f} ≤ accounted ε = {self.epsilon_accounted:.3f} "
            f"(the design could show at most {self.power:.3f}; ε̂ below ε is not proof of privacy)"
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "violation": self.violation}, indent=2)

    @classmethod
    def load(cls, path: Path) -> EmpiricalAudit:
        try:
            data = json.loads(Path(path).read_text())
            data.pop("violation", None)
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise MMFedError(
                f"{path}: not an empirical audit result ({exc}); write one with `mmfed audit empirical`"
            ) from None


def scratch_config(cfg: FederationConfig, work: Path) -> FederationConfig:
    """The run's settings in scratch directories: no real ledger, checkpoint or resume is touched."""
    return cfg.replace(run_dir=str(work / "run"), state_dir=str(work / "state"), resume=False)


def audited_site(cfg: FederationConfig, index: int) -> tuple[str, list]:
    """(name, training samples) of the federation's site number `index` (0-based)."""
    from mmfed.federation.run_task import run_scenario, run_task
    from mmfed.site.loading import site_samples

    if not 0 <= index < cfg.sites:
        raise MMFedError(f"--site {index}: the federation has sites 0..{cfg.sites - 1}")
    name, samples = site_samples(cfg, run_scenario(cfg, run_task(cfg)), index, cfg.sites)
    return name, [s for s in samples if s.split == "train"]


def _key(sample) -> tuple:
    return (sample.id, sample.row, sample.image, sample.audio, sample.text, sample.video, sample.tabular)


def dataset_of(samples: list):
    """A predicate for the audit's hooks: whether a training set is this site's (by its records)."""
    keys = {_key(s) for s in samples}

    def applies(dataset) -> bool:
        held = getattr(dataset, "samples", None)
        return bool(held) and all(_key(s) in keys for s in held)

    return applies


def run_audit(cfg: FederationConfig, mode: str, **kwargs) -> EmpiricalAudit:
    """The experiment of `mode` (MODES) on the federation `cfg`."""
    if mode == "gradient":
        return gradient_audit(cfg, **kwargs)
    if mode == "input":
        return input_audit(cfg, **kwargs)
    raise MMFedError(f"--mode {mode!r}: use {' or '.join(MODES)}")


def gradient_audit(
    cfg: FederationConfig, site: int = 0, canaries: int = 1000, beta: float = 0.05, seed=None, fault=None
) -> EmpiricalAudit:
    """The white-box experiment: the federation `cfg` with gradient canaries at site `site`'s DP step."""
    from mmfed.audit.gradient_canaries import Fault, GradientCanaries, inserted
    from mmfed.server.local_grid import run_federation

    if not cfg.private:
        raise MMFedError("a gradient-canary audit needs DP: set target-epsilon or noise-multiplier")
    name, samples = audited_site(cfg, site)
    hook = GradientCanaries(canaries, dataset_of(samples), seed=seed, fault=fault or Fault())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmfed-audit-") as work:
        run = scratch_config(cfg, Path(work))
        with inserted(hook):
            nodes = [{"partition-id": p, "num-partitions": cfg.sites} for p in range(cfg.sites)]
            summary = run_federation(run, node_configs=nodes, quiet=True)
    if hook.error is not None:
        raise hook.error
    if not hook.steps:
        raise MMFedError(
            f"site {name} took no DP step in the audit's run; check that it trains (min-sites, cap)"
        )
    accounted = summary.get("site_epsilon", {}).get(name, {}).get("epsilon_prv")
    bound = audit_bound(hook.scores, hook.included, cfg.delta, beta)
    return result(name, "gradient", bound, hook.included, accounted, cfg, summary, hook.steps, start, fault)


def input_audit(
    cfg: FederationConfig, site: int = 0, canaries: int = 500, beta: float = 0.05, seed=None, fault=None
) -> EmpiricalAudit:
    """The black-box experiment: the federation `cfg` with mislabelled public inputs, each in site `site`'s
    training data by a fair coin, scored by loss drop between the initial and the final global model. Runs
    with or without DP (without, there is no accounted ε and ε̂ shows what the design can see)."""
    from mmfed.audit.input_canaries import (
        InputCanaries,
        initial_model,
        label_log_probs,
        planted,
        public_pool,
    )
    from mmfed.data.cache import default_cache_dir
    from mmfed.federation.run_task import run_task
    from mmfed.server.local_grid import run_federation
    from mmfed.server.prepare import resolve_initial_model
    from mmfed.use.model_file import load_global_model

    if fault is not None:
        raise MMFedError("input canaries take no deliberate fault: the positive control is a run without DP")
    name, _ = audited_site(cfg, site)
    cfg, _ = resolve_initial_model(cfg)
    task = run_task(cfg)
    features = (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) / "features"
    start = time.perf_counter()
    hook = InputCanaries(canaries, public_pool(cfg, task), len(task.labels), seed=seed)
    before = label_log_probs(initial_model(cfg, task), hook.samples, task, features)
    with tempfile.TemporaryDirectory(prefix="mmfed-audit-") as work:
        run = scratch_config(cfg, Path(work))
        with planted(hook, site):
            nodes = [{"partition-id": p, "num-partitions": cfg.sites} for p in range(cfg.sites)]
            summary = run_federation(run, node_configs=nodes, quiet=True)
        if not summary.get("rounds_completed"):
            raise MMFedError("the audit's run completed no round; check that the sites train (min-sites)")
        after = label_log_probs(load_global_model(run.run_dir).model, hook.samples, task, features)
    hook.scores = after - before  # the loss drop: how much more likely its (wrong) label became
    accounted = summary.get("site_epsilon", {}).get(name, {}).get("epsilon_prv") if cfg.private else None
    bound = audit_bound(hook.scores, hook.included, cfg.delta, beta)
    return result(name, "input", bound, hook.included, accounted, cfg, summary, 0, start, None)


def result(
    name, mode, bound: AuditBound, included, accounted, cfg, summary, steps, start, fault
) -> EmpiricalAudit:
    control = ""
    if fault is not None and (fault.noise_scale != 1.0 or not fault.clipping):
        control = f"noise x{fault.noise_scale:g}" + ("" if fault.clipping else ", no clipping")
    return EmpiricalAudit(
        site=name,
        mode=mode,
        canaries=bound.canaries,
        included=int(sum(bool(i) for i in included)),
        epsilon_lower=bound.epsilon_lower,
        confidence=bound.confidence,
        power=bound.power,
        guesses=bound.guesses,
        correct=bound.correct,
        grid=list(bound.grid),
        epsilon_accounted=accounted,
        delta=cfg.delta,
        rounds=int(summary.get("rounds_completed", 0)),
        steps=steps,
        seconds=time.perf_counter() - start,
        settings={
            "scenario": cfg.scenario,
            "sites": cfg.sites,
            "rounds": cfg.rounds,
            "target_epsilon": cfg.target_epsilon,
            "noise_multiplier": cfg.noise_multiplier,
            "max_grad_norm": cfg.max_grad_norm,
            "batch_size": cfg.batch_size,
            "local_epochs": cfg.local_epochs,
        },
        control=control,
    )
