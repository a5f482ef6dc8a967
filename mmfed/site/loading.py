"""Which site this node is, and its data for the run's task, found from the node config.

Simulation: `partition-id`/`num-partitions` plus the run's sites and partition. Deployment: `site-dir`
(the site's own directory), read through the task the server sends. A process keeps the few sites it
served last (a Ray actor or SuperNode process serves many messages); each site has its own model.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any

from mmfed.config import DataSpec
from mmfed.data.cache import default_cache_dir
from mmfed.data.dataset import Collate, MultimodalDataset, Processors
from mmfed.data.manifest import LABELS_NAME, Sample, load_manifest, read_labels
from mmfed.data.partition import missing_modality_plan, partition, without_modality
from mmfed.data.scenarios import Scenario
from mmfed.errors import ConfigError
from mmfed.federation.config import FederationConfig
from mmfed.federation.run_task import run_scenario, run_task
from mmfed.privacy.policy import POLICY_FILE, SitePolicy, load_policy
from mmfed.site.runtime import SiteRuntime
from mmfed.task import Task
from mmfed.train.loop import select_device

# a simulation process serves many sites in turn: keep the few most recent, not all of them
MAX_CACHED_SITES = 8
_SITES: OrderedDict[tuple, SiteRuntime] = OrderedDict()


def message_task(config: dict[str, Any]) -> Task | None:
    """The task a server message carries (validated like a task file), or None."""
    text = config.get("task")
    return Task.from_json(str(text)) if text else None


def text_settings(spec: DataSpec, cfg: FederationConfig, policy: SitePolicy | None = None) -> DataSpec:
    """The run's de-identification and label-leak settings applied to the text spec; a site's policy can
    require either (the server's setting can only add protection, never take it away)."""
    text = dataclasses.replace(
        spec.text,
        deidentify=cfg.deidentify or bool(policy and policy.deidentify),
        mask_diagnosis=cfg.mask_diagnosis or bool(policy and policy.mask_diagnosis),
    )
    return dataclasses.replace(spec, text=text)


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
        samples = load_manifest(site, labels=scenario.labels, columns=scenario.columns).samples
        name = site.name
    else:
        pooled = [s for m in scenario.load_sites() for s in m.samples]
        parts = partition(pooled, cfg.partition, num_partitions, seed=cfg.seed)
        name, samples = f"part{partition_id:04d}", parts[partition_id]
    if cfg.missing_modality_rate:
        mods = scenario.run_modalities(cfg.modalities or None)
        plan = missing_modality_plan(num_partitions, cfg.missing_modality_rate, mods, seed=cfg.seed)
        if partition_id in plan:
            samples = without_modality(samples, plan[partition_id], mods)
    return name, samples


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


def deployed_samples(site_dir: Path, task: Task) -> list[Sample]:
    """A deployed site's samples, read through the task's columns and labelled in its class order; a site
    whose labels.txt names other classes is refused with both lists (its outputs would mean else)."""
    if (site_dir / LABELS_NAME).exists() and read_labels(site_dir) != list(task.labels):
        raise ConfigError(
            "site-dir",
            f"{site_dir / LABELS_NAME} lists {read_labels(site_dir)} but the run's task ({task.name}) "
            f"trains {list(task.labels)}; join a run for your classes or fix labels.txt",
        )
    return load_manifest(site_dir, labels=list(task.labels), columns=task.columns).samples


def load_site(cfg: FederationConfig, node_config: dict[str, Any], task: Task | None = None) -> SiteRuntime:
    """The SiteRuntime for this node and task (the server's message's; else the run config's), built once
    per process."""
    task = task or run_task(cfg)
    site_dir = node_config.get("site-dir")
    if site_dir:
        key: tuple = (cfg.identity_hash(), task.approval(), "dir", str(site_dir))
    else:
        if "partition-id" not in node_config:
            raise ConfigError("node-config", "set site-dir=PATH (deployment) or partition-id (simulation)")
        pid, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        key = (cfg.identity_hash(), task.approval(), pid, parts)
    if key in _SITES:
        _SITES.move_to_end(key)
        runtime = _SITES[key]
        home = site_home(cfg, node_config, runtime.name)  # the run dir is not in the key: follow it
        if home != runtime.home:
            runtime.home, runtime._budget = home, None
        return runtime
    if site_dir:
        # the site's own manifest supplies the samples (a modality it lacks is simply absent)
        name = Path(site_dir).name
        samples = deployed_samples(Path(site_dir), task)
        # features of the site's records stay in its own home (or where its node config says), never in
        # a folder the server's run config names
        cache = Path(str(node_config.get("cache-dir") or site_home(cfg, node_config, name) / "cache"))
        planned: tuple[str, ...] = ()
    else:
        name, samples = site_samples(cfg, run_scenario(cfg, task), pid, parts)
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        planned = planned_modalities(cfg, task.modalities, pid, parts)
    home = site_home(cfg, node_config, name)
    policy = load_policy(home / POLICY_FILE) if (home / POLICY_FILE).exists() else None
    spec = text_settings(task.data, cfg, policy)
    runtime = _runtime(cfg, task, name, samples, spec, cache, home, deployed=bool(site_dir), planned=planned)
    _SITES[key] = runtime
    while len(_SITES) > MAX_CACHED_SITES:
        _SITES.popitem(last=False)
    return runtime


def _runtime(
    cfg: FederationConfig,
    task: Task,
    name: str,
    samples: list[Sample],
    spec: DataSpec,
    cache: Path,
    home: Path,
    deployed: bool,
    planned: tuple[str, ...],
) -> SiteRuntime:
    processors = Processors(spec, task.modalities, cache_dir=cache / "features")
    train = [s for s in samples if s.split == "train"]
    return SiteRuntime(
        name=name,
        task=task,
        train=MultimodalDataset(
            train, processors, augment=cfg.augment, modality_dropout=cfg.modality_dropout
        ),
        test=MultimodalDataset([s for s in samples if s.split == "test"], processors),
        collate=Collate(spec, task.modalities),
        device=select_device(cfg.device),
        all_train=train,
        home=home,
        deployed=deployed,
        planned_modalities=planned,
    )
