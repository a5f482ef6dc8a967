"""What a run needs settled before it starts (before Ray starts or any site trains): how many sites it
has, where its results go, and whether the files it reads are there. Used by `mmfed simulate` and by the
ServerApp (`run_server`, also under `flwr run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfed.data.site_files import check_site_files
from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.protected import refuse_cache_dir, refuse_protected
from mmfed.runs import new_run_dir


def natural_sites(cfg: FederationConfig, sites_given: bool = True, flwr: bool = False) -> FederationConfig:
    """Natural sites decide the site count: a scenario whose sites come from its data (fsdd-mnist's
    speakers, covid-cxr's hospitals), or a run on `site-dirs`, split naturally, has that many sites.
    `sites` not given: the run gets that number (and min-sites at most it); given and different:
    refused. Builds the scenario once (cached), before any worker starts."""
    from mmfed.data.scenarios import FIXED_SITE_SCENARIOS
    from mmfed.federation.run_task import run_scenario, run_task, site_dir_list

    if cfg.partition != "natural" or not (cfg.site_dirs or cfg.scenario in FIXED_SITE_SCENARIOS):
        return cfg
    natural = len(site_dir_list(cfg.site_dirs) if cfg.site_dirs else run_scenario(cfg, run_task(cfg)).sites)
    if not sites_given:
        return cfg.replace(sites=natural, min_sites=min(cfg.min_sites, natural))
    if cfg.sites != natural:
        how = f"--run-config sites={natural} and {natural} SuperNodes" if flwr else f"--sites {natural}"
        has = "site-dirs names" if cfg.site_dirs else f"{cfg.scenario} has"
        raise MMFedError(f"{has} {natural} natural sites: use {how}, or --partition iid|dirichlet:A")
    return cfg


def check_checkpoint_file(path: Path) -> None:
    """A safetensors file (its header read, nothing loaded): not a folder, not a file of another kind."""
    from safetensors import SafetensorError, safe_open

    if path.is_dir():
        raise MMFedError(f"initial-model {path}: is a folder; give the file (RUN_DIR/model.safetensors)")
    if not path.is_file():
        raise MMFedError(f"initial-model {path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            fh.keys()
    except (SafetensorError, OSError, ValueError):
        raise MMFedError(
            f"initial-model {path}: not a safetensors model file (e.g. the model.safetensors `mmfed train` "
            "writes); give that file"
        ) from None


def _folder_path(option: str, path: Path, file: bool = False) -> None:
    """`path` is a folder, or can become one: neither it nor the nearest existing folder above is a file.
    `file`: `path` is a file to be written, only its folders are checked."""
    for part in path.parents if file else (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"is under {part}, which is a file"
                raise MMFedError(f"{option} {path}: {where}; give a folder (nothing was changed)")
            return


def check_run_paths(cfg: FederationConfig, run_dir: Path) -> None:
    """The folders and files a run writes have the right shape: refused now, not by a site in a Ray worker
    (a state-dir that is a file) or by the server after the first round (an anchor file that is a folder)."""
    from mmfed.data.cache import default_cache_dir

    _folder_path("--run-dir", run_dir)
    if cfg.state_dir:
        _folder_path("--state-dir", Path(cfg.state_dir))
    _folder_path(
        "--cache-dir" if cfg.cache_dir else "the cache folder", Path(cfg.cache_dir or default_cache_dir())
    )
    if cfg.anchor_file:
        anchor = Path(cfg.anchor_file)
        if anchor.is_dir():
            raise MMFedError(
                f"--anchor-file {anchor}: is a folder; give a file (e.g. {anchor / 'anchors.jsonl'}) "
                "(nothing was changed)"
            )
        _folder_path("--anchor-file", anchor, file=True)


def check_run_files(cfg: FederationConfig) -> None:
    """The files a run reads, checked now rather than after the sites have trained a round."""
    from mmfed.train.pretrained import is_pretrained

    if cfg.initial_model and not is_pretrained(cfg.initial_model):  # pretrained:NAME: resolve_initial_model
        check_checkpoint_file(Path(cfg.initial_model))
    if cfg.server_test_dir:
        if not (Path(cfg.server_test_dir) / "manifest.csv").is_file():
            raise MMFedError(f"server-test-dir {cfg.server_test_dir}: no manifest.csv there")
        check_site_files(Path(cfg.server_test_dir))


def check_resources(cpus_per_site: float, gpus_per_site: float, ray_address: str | None = None) -> None:
    """What Ray reserves per simulated site: refused now, not after Ray has started and waits forever for
    a site it can never place (more CPUs or GPUs than the machine has) or fails on a negative count."""
    import math
    import os

    if not (math.isfinite(cpus_per_site) and cpus_per_site > 0):
        raise MMFedError(f"--cpus-per-site {cpus_per_site:g}: must be a number > 0, e.g. 1 or 0.5")
    if not (math.isfinite(gpus_per_site) and gpus_per_site >= 0):
        raise MMFedError(
            f"--gpus-per-site {gpus_per_site:g}: must be a number >= 0, e.g. 0.25 (4 sites a GPU)"
        )
    if ray_address:  # a cluster's resources are its own: Ray says what it lacks
        return
    cpus = os.cpu_count() or 1
    if cpus_per_site > cpus:
        raise MMFedError(
            f"--cpus-per-site {cpus_per_site:g}: this machine has {cpus} CPUs; give at most {cpus} "
            "(a site that needs more would never start)"
        )
    if gpus_per_site > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus_per_site > gpus:
            has = f"has {gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "has no GPU (none CUDA can see)"
            fix = f"give at most {gpus}" if gpus else "leave it at 0"
            raise MMFedError(
                f"--gpus-per-site {gpus_per_site:g}: this machine {has}; {fix} (a site that needs more "
                "would never start)"
            )


def prepare_simulation(config: Path | None, options: dict[str, Any]) -> FederationConfig:
    """The run config of `mmfed simulate`: the scenario file (if any) with the given options over it,
    checked, its folders refused where a run may not write, its site count settled, its paths absolute
    (Ray's worker processes need not share this working directory)."""
    cfg = FederationConfig.from_toml(config, **options) if config else FederationConfig.from_mapping(options)
    target = Path(cfg.run_dir) if cfg.run_dir else new_run_dir("fed", cfg.scenario)
    from mmfed.train.pretrained import is_pretrained

    model_file = cfg.initial_model if cfg.initial_model and not is_pretrained(cfg.initial_model) else None
    reads = [config, model_file]
    refuse_protected("--run-dir", target, reads, folder=True, instead="choose another --run-dir")
    if cfg.state_dir:  # by design STATE_DIR/<site> are site homes: only not inside a site's keys/, state/
        refuse_protected(
            "--state-dir", cfg.state_dir, reads, folder=True, instead="choose another --state-dir"
        )
    refuse_cache_dir(cfg.cache_dir or None)
    check_run_paths(cfg, target)
    check_run_files(cfg)
    if cfg.task or cfg.site_dirs:  # read the task (and its sites) now, not in every Ray worker
        from mmfed.federation.run_task import run_scenario, run_task

        run_scenario(cfg, run_task(cfg))
    cfg = natural_sites(cfg, sites_given="sites" in options)

    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if path else ""

    return cfg.replace(
        task=absolute(cfg.task),
        site_dirs=",".join(absolute(p.strip()) for p in cfg.site_dirs.split(",") if p.strip()),
        run_dir=absolute(str(target)),
        data_dir=absolute(cfg.data_dir),
        cache_dir=absolute(cfg.cache_dir),
        state_dir=absolute(cfg.state_dir or str(target / "sites")),
        initial_model=cfg.initial_model if is_pretrained(cfg.initial_model) else absolute(cfg.initial_model),
    )


def resolve_initial_model(cfg: FederationConfig, on_train=None, progress=None):
    """`initial-model = pretrained:NAME` -> (the run config with the cached model file instead, what
    mmfed.train.pretrained says of it); trained first (on public data only) when it is not cached yet.
    Any other run config comes back as it is, with None."""
    from mmfed.train.pretrained import is_pretrained, pretrained_model

    if not is_pretrained(cfg.initial_model):
        return cfg, None
    from mmfed.data.cache import default_cache_dir
    from mmfed.federation.run_task import run_task

    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    found = pretrained_model(
        cfg.initial_model,
        run_task(cfg),
        cache,
        device=cfg.device,
        on_train=on_train,
        progress=progress,
        data_dir=cfg.data_dir or None,
        seed=cfg.seed,
    )
    return cfg.replace(initial_model=str(found.path)), found
