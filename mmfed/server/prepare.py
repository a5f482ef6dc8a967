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


def check_run_files(cfg: FederationConfig) -> None:
    """The files a run reads, checked now rather than after the sites have trained a round."""
    if cfg.initial_model and not Path(cfg.initial_model).is_file():
        raise MMFedError(f"initial-model {cfg.initial_model}: no such file")
    if cfg.server_test_dir:
        if not (Path(cfg.server_test_dir) / "manifest.csv").is_file():
            raise MMFedError(f"server-test-dir {cfg.server_test_dir}: no manifest.csv there")
        check_site_files(Path(cfg.server_test_dir))


def prepare_simulation(config: Path | None, options: dict[str, Any]) -> FederationConfig:
    """The run config of `mmfed simulate`: the scenario file (if any) with the given options over it,
    checked, its folders refused where a run may not write, its site count settled, its paths absolute
    (Ray's worker processes need not share this working directory)."""
    cfg = FederationConfig.from_toml(config, **options) if config else FederationConfig.from_mapping(options)
    target = Path(cfg.run_dir) if cfg.run_dir else new_run_dir("fed", cfg.scenario)
    reads = [config, cfg.initial_model or None]
    refuse_protected("--run-dir", target, reads, folder=True, instead="choose another --run-dir")
    if cfg.state_dir:  # by design STATE_DIR/<site> are site homes: only not inside a site's keys/, state/
        refuse_protected(
            "--state-dir", cfg.state_dir, reads, folder=True, instead="choose another --state-dir"
        )
    refuse_cache_dir(cfg.cache_dir or None)
    check_run_files(cfg)
    cfg = natural_sites(cfg, sites_given="sites" in options)

    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if path else ""

    return cfg.replace(
        run_dir=absolute(str(target)),
        data_dir=absolute(cfg.data_dir),
        cache_dir=absolute(cfg.cache_dir),
        state_dir=absolute(cfg.state_dir or str(target / "sites")),
        initial_model=absolute(cfg.initial_model),
    )
