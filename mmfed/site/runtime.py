"""A site's data and model as its ClientApp sees them, found from the node config.

Simulation: `partition-id`/`num-partitions` plus the run's scenario and partition. Deployment:
`site-dir` (the site's own directory). Loaded once per process and reused across rounds (a Ray actor or
SuperNode process serves many messages).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmfed.config import ModelConfig, config_hash
from mmfed.data.cache import default_cache_dir
from mmfed.data.dataset import Collate, MultimodalDataset, Processors
from mmfed.data.manifest import Sample, load_manifest
from mmfed.data.partition import missing_modality_plan, partition, without_modality
from mmfed.data.scenarios import Scenario, prepare_scenario
from mmfed.errors import ConfigError, DataError
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
from mmfed.train.dp import make_optimizer, train_private
from mmfed.train.loop import Metrics, evaluate, seed_everything, select_device, train_epoch


def federation_scenario(cfg: FederationConfig, build: bool = True) -> Scenario:
    """The scenario every party of a simulated run derives its data and model shape from (build=False:
    only its description, which is all the server needs)."""
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    scenario = prepare_scenario(
        cfg.scenario,
        data_dir=cfg.data_dir or None,
        cache_dir=cache,
        seed=cfg.seed,
        num_sites=cfg.sites if cfg.scenario != "fsdd-mnist" else 6,
        samples_per_site=cfg.samples_per_site,
        modalities=cfg.modalities or ("image", "audio", "text"),  # synthetic: write only what is used
        build=build,
    )
    return with_text_settings(scenario, cfg)


def with_text_settings(
    scenario: Scenario, cfg: FederationConfig, policy: SitePolicy | None = None
) -> Scenario:
    """The run's de-identification and label-leak settings applied to the scenario's text spec; a site's
    policy can require either (the server's setting can only add protection, never take it away)."""
    text = dataclasses.replace(
        scenario.spec.text,
        deidentify=cfg.deidentify or bool(policy and policy.deidentify),
        mask_diagnosis=cfg.mask_diagnosis or bool(policy and policy.mask_diagnosis),
    )
    scenario.spec = dataclasses.replace(scenario.spec, text=text)
    return scenario


def site_samples(
    cfg: FederationConfig, scenario: Scenario, partition_id: int, num_partitions: int
) -> tuple[str, list[Sample]]:
    """(site name, samples) of partition `partition_id`."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError("partition-id", f"{partition_id} is outside 0..{num_partitions - 1}")
    if cfg.partition == "natural":
        if len(scenario.sites) != num_partitions:
            raise ConfigError(
                "num-partitions",
                f"scenario {scenario.name} has {len(scenario.sites)} natural sites but the federation has "
                f"{num_partitions} nodes; run {len(scenario.sites)} sites or use --partition iid|dirichlet:A",
            )
        site = scenario.site(partition_id)
        name, samples = site.name, load_manifest(site, labels=scenario.labels).samples
    else:
        pooled = [s for m in scenario.load_sites() for s in m.samples]
        parts = partition(pooled, cfg.partition, num_partitions, seed=cfg.seed)
        name, samples = f"part{partition_id:04d}", parts[partition_id]
    if cfg.missing_modality_rate:
        mods = scenario.run_modalities(cfg.modalities)
        plan = missing_modality_plan(num_partitions, cfg.missing_modality_rate, mods, seed=cfg.seed)
        if partition_id in plan:
            samples = without_modality(samples, plan[partition_id], mods)
    return name, samples


@dataclass
class SiteRuntime:
    name: str
    model_cfg: ModelConfig
    train: MultimodalDataset
    test: MultimodalDataset
    collate: Collate
    device: torch.device
    all_train: list[Sample]  # every training record, whatever the run's modalities: the budget's key
    home: Path  # the site's privacy home: site.toml, keys/, state/ (see mmfed.privacy.budget)
    deployed: bool  # a deployed site must have its own policy and key; a simulated one gets defaults
    planned_modalities: tuple[str, ...] = ()  # simulation: the run's modalities less the plan's (public)
    labels: tuple[str, ...] = ()  # the run's classes, in order
    model: torch.nn.Module = field(init=False)
    _budget: SiteBudget | None = field(init=False, default=None)
    _held: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        # one model object per process and config: every fit/evaluate overwrites all of its weights
        key = (config_hash(self.model_cfg), str(self.device))
        if key not in _MODELS:
            model = build_model(self.model_cfg).to(self.device)
            # what the model trains as built (a pretrained MiniLM keeps most of itself frozen)
            _MODELS[key] = (model, {n for n, p in model.named_parameters() if p.requires_grad})
        self.model, self._trainable = _MODELS[key]

    def group_examples(self) -> list[int]:
        """Training examples behind each parameter group: all of them for the shared part, and for each
        modality's encoder the samples that hold that modality (see mmfed.federation.encoder_groups)."""
        samples = self.train.samples
        per_modality = [sum(getattr(s, m) is not None for s in samples) for m in self.model_cfg.modalities]
        return [len(samples), *per_modality]

    def parameter_groups(self) -> list[int]:
        return parameter_groups(list(self.model.state_dict()), self.model_cfg.modalities)

    def _set_trainable(self, cfg: FederationConfig, held: tuple[str, ...] | None = None) -> None:
        """The model object is shared between sites, so this is set on every fit: an encoder is frozen when
        the run freezes encoders or when this site has no data for its modality (under DP it would
        otherwise receive pure noise, and AdamW's weight decay would move it). Under DP "has data" is the
        site's declaration `held` (whether a count is zero depends on the records)."""
        if held is None:
            counts = self.group_examples()[1:]
            held = tuple(m for m, n in zip(self.model_cfg.modalities, counts, strict=True) if n)
        absent = [m for m in self.model_cfg.modalities if m not in held]
        frozen = ("encoders.",) if cfg.freeze_encoders else tuple(f"encoders.{m}." for m in absent)
        for name, param in self.model.named_parameters():
            param.requires_grad = name in self._trainable and not name.startswith(frozen)

    def loader(self, dataset: MultimodalDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            generator=torch.Generator().manual_seed(seed),
        )

    def budget(self, cfg: FederationConfig) -> SiteBudget | None:
        """The site's privacy budget; None only for a simulated site without a policy in a non-DP run."""
        if self._budget is None and (self.deployed or cfg.private or (self.home / POLICY_FILE).exists()):
            default = None
            if not self.deployed:
                default = SitePolicy(
                    max_epsilon=math.inf,
                    delta=cfg.delta,
                    min_noise_multiplier=0.0,
                    max_clipping_norm=math.inf,
                    max_sample_rate=1.0,
                    secure_rng=False,  # fresh torch generator from OS entropy: faster in simulation
                    source="simulation default (no site.toml: no cap)",
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
            if approved and (this := model_approval(self.model_cfg, self.labels)) not in approved:
                raise Refusal(
                    "model",
                    f"site {self.name}: the run's model {this} is not in approved_models {list(approved)}; "
                    "review it with `mmfed site approve --config RUN.toml`",
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


def model_approval(model_cfg: ModelConfig, labels: tuple[str, ...] | list[str]) -> str:
    """What a site approves (`approved_models`): the hash of the model's description and the task's
    labels — the architecture it will train and what its outputs mean."""
    return config_hash({"model": model_cfg, "labels": list(labels)})


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


_MODELS: dict[tuple, tuple[torch.nn.Module, set[str]]] = {}
# a simulation process serves many sites in turn: keep the few most recent, not all of them
_RUNTIMES: OrderedDict[tuple, SiteRuntime] = OrderedDict()
MAX_CACHED_SITES = 8


def planned_modalities(
    cfg: FederationConfig, modalities: tuple[str, ...], partition_id: int, num_partitions: int
) -> tuple[str, ...]:
    """What a simulated site holds by the run's seeded missing-modality plan (public, like the config)."""
    if not cfg.missing_modality_rate:
        return tuple(modalities)
    plan = missing_modality_plan(num_partitions, cfg.missing_modality_rate, modalities, seed=cfg.seed)
    return tuple(m for m in modalities if m != plan.get(partition_id))


def site_home(cfg: FederationConfig, node_config: dict[str, Any], name: str) -> Path:
    """Deployment: node config `state-dir`, else the site directory. Simulation: STATE_DIR/<site>, where
    STATE_DIR is `state-dir`, else the run directory's sites/, else (`flwr run` without either, whose
    workers run in Flower's app folder) ~/.mmfed/sites."""
    if node_config.get("site-dir"):
        return Path(str(node_config.get("state-dir") or node_config["site-dir"])).resolve()
    if cfg.state_dir:
        root = Path(cfg.state_dir)
    elif cfg.run_dir:
        root = Path(cfg.run_dir) / "sites"
    else:
        root = Path.home() / ".mmfed" / "sites"
    return root.resolve() / name


def deployed_samples(site_dir: Path, scenario: Scenario) -> list[Sample]:
    """A deployed site's samples, labelled in the run's class order; a site whose labels.txt names other
    classes is refused with both lists (its model outputs would mean something else)."""
    from mmfed.data.manifest import LABELS_NAME, read_labels

    if (site_dir / LABELS_NAME).exists() and read_labels(site_dir) != scenario.labels:
        raise ConfigError(
            "site-dir",
            f"{site_dir / LABELS_NAME} lists {read_labels(site_dir)} but the run ({scenario.name}) trains "
            f"{scenario.labels}; join a run for your classes or fix labels.txt",
        )
    return load_manifest(site_dir, labels=scenario.labels).samples


def load_site(cfg: FederationConfig, node_config: dict[str, Any]) -> SiteRuntime:
    """The SiteRuntime for this node, built once per process."""
    site_dir = node_config.get("site-dir")
    if site_dir:
        key: tuple = (cfg.identity_hash(), "dir", str(site_dir))
    else:
        if "partition-id" not in node_config:
            raise ConfigError("node-config", "set site-dir=PATH (deployment) or partition-id (simulation)")
        key = (cfg.identity_hash(), int(node_config["partition-id"]), int(node_config["num-partitions"]))
    if key in _RUNTIMES:
        _RUNTIMES.move_to_end(key)
        runtime = _RUNTIMES[key]
        home = site_home(cfg, node_config, runtime.name)  # the run dir is not in the key: follow it
        if home != runtime.home:
            runtime.home, runtime._budget = home, None
        return runtime
    if site_dir:
        # the run's labels, modalities and tensor settings, exactly as the server built the model from
        # them; the site's own manifest supplies the samples (a modality it lacks is simply absent)
        scenario = federation_scenario(cfg, build=False)
        name = Path(site_dir).name
        samples = deployed_samples(Path(site_dir), scenario)
        # features of the site's records stay in its own home (or where its node config says), never in
        # a folder the server's run config names
        cache = Path(str(node_config.get("cache-dir") or site_home(cfg, node_config, name) / "cache"))
    else:
        scenario = federation_scenario(cfg)
        name, samples = site_samples(cfg, scenario, key[1], key[2])
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    home = site_home(cfg, node_config, name)
    policy = load_policy(home / POLICY_FILE) if (home / POLICY_FILE).exists() else None
    scenario = with_text_settings(scenario, cfg, policy)
    model_cfg = cfg.model_config(scenario)
    processors = Processors(scenario.spec, model_cfg.modalities, cache_dir=cache / "features")
    runtime = SiteRuntime(
        name=name,
        model_cfg=model_cfg,
        train=MultimodalDataset(
            [s for s in samples if s.split == "train"],
            processors,
            augment=cfg.augment,
            modality_dropout=cfg.modality_dropout,
        ),
        test=MultimodalDataset([s for s in samples if s.split == "test"], processors),
        collate=Collate(scenario.spec, model_cfg.modalities),
        device=select_device(cfg.device),
        all_train=[s for s in samples if s.split == "train"],
        home=home,
        deployed=bool(site_dir),
        labels=tuple(scenario.labels),
        planned_modalities=() if site_dir else planned_modalities(cfg, model_cfg.modalities, key[1], key[2]),
    )
    _RUNTIMES[key] = runtime
    while len(_RUNTIMES) > MAX_CACHED_SITES:
        _RUNTIMES.popitem(last=False)
    return runtime
