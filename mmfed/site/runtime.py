"""A site at work: local training (plain, or DP under its budget), evaluation, and what each releases.

Built by mmfed.site.loading for one site and one task; it owns its model (nothing is shared between the
sites a process serves).
"""

from __future__ import annotations

import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfed.config import config_hash
from mmfed.data.dataset import Collate, MultimodalDataset
from mmfed.data.manifest import Sample
from mmfed.errors import DataError
from mmfed.federation.config import FederationConfig
from mmfed.federation.encoder_groups import parameter_groups
from mmfed.federation.params import delta, get_weights, set_weights
from mmfed.models import build_model
from mmfed.privacy.budget import Proposal, Refusal, SiteBudget
from mmfed.privacy.fingerprint import data_fingerprint
from mmfed.privacy.geometry import rounded_size
from mmfed.privacy.policy import POLICY_FILE, SitePolicy, load_policy
from mmfed.privacy.randomness import fresh_randomness
from mmfed.site import sitelog
from mmfed.task import Task
from mmfed.train.dp import train_private
from mmfed.train.loop import Metrics, evaluate, make_loader, make_optimizer, seed_everything, train_epoch


@dataclass
class SiteRuntime:
    name: str
    task: Task  # what the run trains: labels, modalities, tensor settings, model
    train: MultimodalDataset
    test: MultimodalDataset
    collate: Collate
    device: torch.device
    all_train: list[Sample]  # every training record, whatever the run's modalities: the budget's key
    home: Path  # the site's privacy home: site.toml, keys/, state/ (see mmfed.privacy.budget)
    deployed: bool  # a deployed site must have its own policy and key; a simulated one gets defaults
    planned_modalities: tuple[str, ...] = ()  # simulation: the run's modalities less the plan's (public)
    model: torch.nn.Module = field(init=False)
    _budget: SiteBudget | None = field(init=False, default=None)
    _held: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.model_cfg = self.task.model_config()
        self.model = build_model(self.model_cfg).to(self.device)
        # what the model trains as built (a pretrained MiniLM keeps most of itself frozen)
        self._trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}

    @property
    def labels(self) -> tuple[str, ...]:
        return self.task.labels

    def group_examples(self) -> list[int]:
        """Training examples behind each parameter group: all of them for the shared part, and for each
        modality's encoder the samples that hold that modality (see mmfed.federation.encoder_groups)."""
        samples = self.train.samples
        per_modality = [sum(getattr(s, m) is not None for s in samples) for m in self.model_cfg.modalities]
        return [len(samples), *per_modality]

    def parameter_groups(self) -> list[int]:
        return parameter_groups(list(self.model.state_dict()), self.model_cfg.modalities)

    def _set_trainable(self, cfg: FederationConfig, held: tuple[str, ...] | None = None) -> None:
        """Set on every fit (the run and the site's declaration may change between rounds): an encoder is
        frozen when the run freezes encoders or when this site has no data for its modality (under DP it would
        otherwise receive pure noise, and AdamW's weight decay would move it). Under DP "has data" is the
        site's declaration `held` (whether a count is zero depends on the records)."""
        if held is None:
            counts = self.group_examples()[1:]
            held = tuple(m for m, n in zip(self.model_cfg.modalities, counts, strict=True) if n)
        absent = [m for m in self.model_cfg.modalities if m not in held]
        frozen = ("encoders.",) if cfg.freeze_encoders else tuple(f"encoders.{m}." for m in absent)
        for name, param in self.model.named_parameters():
            param.requires_grad = name in self._trainable and not name.startswith(frozen)

    def loader(self, dataset: MultimodalDataset, batch_size: int, shuffle: bool, seed: int):
        return make_loader(dataset, self.collate, batch_size, shuffle, seed)

    def budget(self, cfg: FederationConfig) -> SiteBudget | None:
        """The site's privacy budget; None only for a simulated site without a policy in a non-DP run."""
        if self._budget is None and (self.deployed or cfg.private or (self.home / POLICY_FILE).exists()):
            default = None
            if not self.deployed:
                default = SitePolicy(
                    max_epsilon=cfg.site_max_epsilon or math.inf,
                    delta=cfg.delta,
                    min_noise_multiplier=0.0,
                    max_clipping_norm=math.inf,
                    max_sample_rate=1.0,
                    secure_rng=False,  # fresh torch generator from OS entropy: faster in simulation
                    source=(
                        f"simulation default (no site.toml; site-max-epsilon {cfg.site_max_epsilon:g})"
                        if cfg.site_max_epsilon
                        else "simulation default (no site.toml: no cap)"
                    ),
                )
            fingerprint = data_fingerprint(self.all_train)
            self._budget = SiteBudget(self.home, fingerprint, site=self.name, simulated_policy=default)
        return self._budget

    def private(self, cfg: FederationConfig) -> bool:
        """Whether this site trains under DP (and so releases only what the DP message allows)."""
        return self.budget(cfg) is not None

    def release_group_examples(self, cfg: FederationConfig, examples: int) -> list[int]:
        """The per-encoder weights sent with an update. Under DP they follow from the public size and the
        modalities the site declares it holds, never from counts of records."""
        if not self.private(cfg):
            return self.group_examples()
        return [examples, *(examples if m in self._held else 0 for m in self.model_cfg.modalities)]

    def held_modalities(self, budget: SiteBudget) -> tuple[str, ...]:
        """The modalities a DP site declares it holds: its policy's held_modalities; in simulation, without
        one, the run's modalities less the one the (seeded, public) missing-modality plan took away."""
        if budget.policy.held_modalities:
            return tuple(m for m in self.model_cfg.modalities if m in budget.policy.held_modalities)
        if self.deployed:
            raise Refusal(
                "held-modalities",
                f"site {self.name}: {self.home / POLICY_FILE} declares no privacy.held_modalities; list the "
                'modalities this site\'s records have (e.g. ["image", "text"])',
            )
        return self.planned_modalities

    def public_examples(self, budget: SiteBudget) -> int:
        """The size the site discloses: its policy's public_examples; in simulation, without one, N rounded
        to two significant digits (mmfed.privacy.geometry). A deployed site must declare it."""
        if budget.policy.public_examples:
            return budget.policy.public_examples
        if self.deployed:
            raise Refusal(
                "public-size",
                f"site {self.name}: {self.home / POLICY_FILE} declares no privacy.public_examples; add the "
                "number of training records you disclose (rounded, e.g. to two significant digits)",
            )
        return rounded_size(len(self.train))

    def fit(
        self, weights: list, cfg: FederationConfig, server_round: int, run_id: str = "", anchor: str = ""
    ) -> tuple[list, int, dict[str, Any]]:
        """Local training from the global weights; returns (delta, examples, metrics).

        With a privacy budget: DP-SGD under the site's policy; raises Refusal (nothing trained, nothing
        recorded) when the proposal breaks it."""
        budget = self.budget(cfg)
        if budget is not None:
            return self._fit_private(weights, cfg, server_round, run_id, budget, anchor)
        if not len(self.train):
            raise DataError(f"site {self.name} has no training samples for this run's modalities")
        # seeded by (run seed, round, site): a non-DP round replays exactly, which makes resume
        # bit-identical. DP rounds never use it (see _fit_private).
        seed = zlib.crc32(f"{cfg.seed}:{server_round}:{self.name}".encode())
        seed_everything(seed)
        set_weights(self.model, weights)
        self.model.to(self.device)
        self._set_trainable(cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg.optimizer, params, cfg.round_lr(server_round))
        loader = self.loader(self.train, cfg.batch_size, True, seed)
        start = time.perf_counter()
        fit = Metrics()
        for _ in range(cfg.local_epochs):
            fit = train_epoch(self.model, loader, optimizer, self.device)
        seconds = time.perf_counter() - start
        update = delta(get_weights(self.model), weights)
        metrics = {"site": self.name, "loss": fit.loss, "accuracy": fit.accuracy, "train_seconds": seconds}
        return update, len(self.train), metrics

    def _fit_private(
        self,
        weights: list,
        cfg: FederationConfig,
        server_round: int,
        run_id: str,
        budget: SiteBudget,
        anchor: str = "",
    ) -> tuple[list, int, dict[str, Any]]:
        """A DP round. What leaves the site (README, "What the server learns"): the noised update, the
        public size as FedAvg weight, and the ε bookkeeping; train loss and accuracy stay in the site log."""
        proposal = Proposal(
            noise_multiplier=cfg.noise_multiplier,
            target_epsilon=cfg.target_epsilon,
            max_grad_norm=cfg.max_grad_norm,
            batch_size=cfg.batch_size,
            local_epochs=cfg.local_epochs,
            rounds=cfg.rounds,
            modalities=self.model_cfg.modalities,
        )
        # every random draw of a DP round is secret: augmentation, modality dropout and model dropout too
        # (how much of a known stream they use depends on which records were sampled)
        seed_everything(int.from_bytes(os.urandom(4), "little"))
        set_weights(self.model, weights)
        self.model.to(self.device)
        with budget.exclusive():
            budget.check_anchor(anchor)
            approved = self._current_policy(budget).approved_models
            if approved and (this := self.task.approval()) not in approved:
                raise Refusal(
                    "model",
                    f"site {self.name}: the run's task {self.task.name} ({this}) is not in approved_models "
                    f"{list(approved)}; review it with `mmfed site approve --task TASK.toml`",
                )
            self._held = self.held_modalities(budget)
            self._set_trainable(cfg, self._held)
            plan = budget.plan(proposal, self.public_examples(budget))
            randomness = fresh_randomness(budget.policy.secure_rng, self.device)
            start = time.perf_counter()
            fit, history, failed = train_private(
                self.model,
                self.train,
                self.collate,
                lr=cfg.round_lr(server_round),
                optimizer=cfg.optimizer,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
                geometry=plan.geometry,
                history=plan.history,
                device=self.device,
                randomness=randomness,
                grad_sample_mode=cfg.grad_sample_mode,
            )
            seconds = time.perf_counter() - start
            update = delta(get_weights(self.model), weights)
            # recorded before the update leaves the site: an unrecorded release cannot happen
            entry = budget.release(
                plan,
                history,
                run_id=run_id or "unknown",
                round=server_round,
                extra={
                    "model_hash": config_hash(self.model_cfg),
                    "task_hash": self.task.approval(),
                    "run_config_hash": cfg.identity_hash(),
                    "randomness": randomness.name,
                    "versions": library_versions(),
                },
            )
        sitelog.record(
            self.home, "released", run_id=run_id, round=server_round, loss=fit.loss, accuracy=fit.accuracy,
            examples=len(self.train), public_examples=plan.geometry.public_examples, train_seconds=seconds,
            epsilon_prv=entry["epsilon_prv"],
            records_failed=sorted(self.train.samples[i].id for i in failed),
        )  # fmt: skip
        metrics = {"site": self.name, **{k: entry[k] for k in DP_METRICS}, **ledger_head(entry)}
        if entry["max_epsilon"] is not None:
            metrics["max_epsilon"] = entry["max_epsilon"]
        return update, plan.geometry.public_examples, metrics

    def evaluate(
        self, weights: list, cfg: FederationConfig, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Loss and accuracy of `weights` on the site's test split. Under DP only as check_evaluation
        allows, with the values rounded."""
        if not self.private(cfg):
            result = self.test_metrics(weights)
            return result.loss, result.examples, {"site": self.name, "accuracy": result.accuracy}
        run_id, server_round = str(config.get("run-id", "")), int(config.get("server-round", -1))
        self.check_evaluation(cfg, run_id, server_round)
        result = self.test_metrics(weights)
        sitelog.record(self.home, "evaluated", run_id=run_id, round=server_round, loss=result.loss,
                       accuracy=result.accuracy, examples=result.examples)  # fmt: skip
        # rounded: exact values would tell the exact test count (accuracy = correct / count)
        metrics = {"site": self.name, "accuracy": round(result.accuracy, 3)}
        return round(result.loss, 3), rounded_size(result.examples), metrics

    def test_metrics(self, weights: list) -> Metrics:
        set_weights(self.model, weights)
        self.model.to(self.device)
        return evaluate(self.model, self.loader(self.test, 256, False, 0), self.device)

    def check_evaluation(self, cfg: FederationConfig, run_id: str, server_round: int) -> None:
        """Refusal unless this site may evaluate now: its policy allows it, and this is the model of a round
        of this run that the site released an update for, evaluated once. So evaluations never outnumber
        releases (and stop when the budget does), whatever weights or run ids the server sends."""
        budget = self.budget(cfg)
        assert budget is not None
        if not self._current_policy(budget).allow_evaluation:
            raise Refusal("evaluation", f"site {self.name}: allow_evaluation is false in the site policy")
        done = sitelog.events(self.home, run_id, server_round)
        if not any(e["event"] == "released" for e in done):
            raise Refusal(
                "evaluation", f"site {self.name}: released no update in run {run_id!r} round {server_round}"
            )
        if any(e["event"] == "evaluated" for e in done):
            raise Refusal(
                "evaluation", f"site {self.name}: already evaluated run {run_id!r} round {server_round}"
            )

    def check_secure_aggregation(self, cfg: FederationConfig, masked: bool) -> None:
        """Refusal when the site's policy requires SecAgg+ and this message is not SecAgg+."""
        budget = self.budget(cfg)
        if not masked and budget is not None and self._current_policy(budget).require_secure_aggregation:
            raise Refusal(
                "secure-aggregation",
                f"site {self.name}: require_secure_aggregation is true in the site policy and this train "
                "message is not SecAgg+",
            )

    def evaluation_sums(self, weights: list, cfg: FederationConfig) -> np.ndarray:
        """Under secure aggregation the site's evaluation of the model it receives travels inside the
        masked update, so the server learns only sums over sites: (loss sum, correct, test examples).
        It leaves only with this round's update (a refused round sends nothing), so the one check here is
        the policy's allow_evaluation; zeros when it is false (the site adds nothing to the sums)."""
        budget = self.budget(cfg)
        if budget is not None and not self._current_policy(budget).allow_evaluation:
            return np.zeros(3)
        result = self.test_metrics(weights)
        return np.asarray([result.loss * result.examples, result.accuracy * result.examples, result.examples])

    def _current_policy(self, budget: SiteBudget) -> SitePolicy:
        if (self.home / POLICY_FILE).exists():  # the site may change it any time
            budget.policy = load_policy(self.home / POLICY_FILE)
        return budget.policy


# what a DP release carries besides the update: the ε bookkeeping and the public geometry
DP_METRICS = ("epsilon_prv", "epsilon_rdp", "delta", "noise_multiplier", "sample_rate", "steps")


def ledger_head(entry: dict[str, Any]) -> dict[str, Any]:
    """The ledger entry a release was recorded in, as the server anchors it: index, line hash, signature.
    Every field of the entry is public or keyed (its data fingerprint is an HMAC under a site secret)."""
    from mmfed.privacy import ledger

    return {
        "ledger_index": entry["index"],
        "ledger_hash": ledger.line_hash(ledger.canonical(entry)),
        "ledger_signature": entry["signature"],
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("mmfed", "opacus", "torch", "flwr")}
