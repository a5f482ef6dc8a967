"""Simulated federation on Flower's simulation engine (Ray), with the same ServerApp and ClientApp.

Flower 1.42 offers Ray as the only simulation backend. `run_simulation` starts a local Ray instance and
shuts it down when it returns (also on error); with `ray_address` it attaches to an existing cluster,
which it leaves running.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

from mmfed.federation.config import FederationConfig
from mmfed.server.apps import make_client_app, make_server_app


def backend_config(cpus_per_site: float, gpus_per_site: float, ray_address: str | None) -> dict[str, Any]:
    """Flower's backend_config: resources per simulated site, and how Ray is started or joined."""
    init_args: dict[str, Any] = (
        {"address": ray_address}
        if ray_address
        else {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
        }
    )
    return {
        "client_resources": {"num_cpus": cpus_per_site, "num_gpus": gpus_per_site},
        "init_args": init_args,
    }


def simulate(
    cfg: FederationConfig,
    cpus_per_site: float = 1.0,
    gpus_per_site: float = 0.0,
    ray_address: str | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the federation; returns the run summary. Errors of the server (e.g. too few sites) propagate."""
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # each simulated site uses as many torch threads as the CPUs it was given, not the machine's
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(cpus_per_site)))
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)  # Flower logs every message; our metrics say what matters
    result: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=make_server_app(cfg, on_round=on_round, result=result),
                client_app=make_client_app(cfg),
                num_supernodes=cfg.sites,
                backend_config=backend_config(cpus_per_site, gpus_per_site, ray_address),
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(level)
    return result
