"""What a run trains: its task (a task.toml, or a built-in scenario's) and, in simulation, its sites.

The server builds the model from `run_task` and sends the task with every message; a site reads its
manifest through the task it receives (mmfed.site.loading), so a deployed site needs no scenario name.
"""

from __future__ import annotations

from pathlib import Path

from mmfed.data.cache import default_cache_dir
from mmfed.data.scenarios import Scenario, describe_scenario, prepare_scenario
from mmfed.errors import ConfigError
from mmfed.federation.config import FederationConfig
from mmfed.task import ModelSettings, Task, load_task

# run settings that describe the model: with a task file its [model] section says them, once
MODEL_SETTINGS = ("fusion", "image_encoder", "text_encoder", "freeze_text", "modalities")


def run_task(cfg: FederationConfig) -> Task:
    """The run's task: the task file when `task` is set, else the scenario's with the run's model settings."""
    if cfg.task:
        task = load_task(cfg.task)
        defaults = FederationConfig()
        for name in MODEL_SETTINGS:
            if getattr(cfg, name) != getattr(defaults, name):
                raise ConfigError(
                    name.replace("_", "-"),
                    f"the task file {cfg.task} declares the model and modalities; set {name} in its "
                    "[model] or [task] section instead of the run config",
                )
        return task
    if cfg.site_dirs:
        raise ConfigError(
            "site-dirs", "your own sites need a task file: draft one with `mmfed task init --from-site DIR`"
        )
    model = ModelSettings(
        fusion=cfg.fusion,
        image_encoder=cfg.image_encoder,
        text_encoder=cfg.text_encoder,
        freeze_text=cfg.freeze_text,
    )
    return describe_scenario(cfg.scenario, _written(cfg)).task(model, cfg.modalities or None)


def run_scenario(cfg: FederationConfig, task: Task) -> Scenario:
    """The sites a simulated run splits: the `site-dirs` read through the task, or the scenario's (built
    once into the cache)."""
    if cfg.site_dirs:
        return Scenario.of_task(task, site_dir_list(cfg.site_dirs))
    if cfg.task:  # a built-in scenario's sites hold the scenario's task, not this one
        raise ConfigError(
            "site-dirs", f"a simulation of the task in {cfg.task} needs its sites: give --site-dirs DIR,DIR"
        )
    return prepare_scenario(
        cfg.scenario,
        data_dir=cfg.data_dir or None,
        cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(),
        seed=cfg.seed,
        num_sites=cfg.sites,
        samples_per_site=cfg.samples_per_site,
        modalities=_written(cfg),
    )


def site_dir_list(value: str) -> list[Path]:
    sites = [Path(p.strip()).resolve() for p in value.split(",") if p.strip()]
    if not sites:
        raise ConfigError("site-dirs", 'name at least one site directory, e.g. site-dirs = "a,b"')
    missing = [str(p) for p in sites if not p.is_dir()]
    if missing:
        raise ConfigError("site-dirs", f"{missing[0]} is not a directory")
    names = [p.name for p in sites]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError("site-dirs", f"two site directories are named {repeated[0]!r}; a site is its name")
    return sites


def _written(cfg: FederationConfig) -> str | tuple[str, ...]:
    """synthetic: write only the modalities the run uses"""
    return cfg.modalities or ("image", "audio", "text")
