"""Simulated federation on Flower's simulation engine (Ray), with the same ServerApp and ClientApp.

Flower 1.42 offers Ray as the only simulation backend. `run_simulation` starts a local Ray instance and
shuts it down when it returns (also on error); with `ray_address` it attaches to an existing cluster,
which it leaves running. A killed `mmfed simulate` leaves nothing running either (mmfed.server.reaper),
and a killed site worker is restarted by Ray for the rounds after (the round it was in goes on without it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.server import reaper
from mmfed.server.apps import make_client_app, make_server_app

# how often Ray restarts a site's worker that died (killed, out of memory): the message it was handling
# fails (the site is reported failed for that round), the next ones are served by the restarted worker
WORKER_RESTARTS = 8


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
        "client_resources": {
            "num_cpus": cpus_per_site,
            "num_gpus": gpus_per_site,
            "max_restarts": WORKER_RESTARTS,  # passed to the actors' .options() by Flower's Ray backend
        },
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
    """Run the federation; returns the run summary. Errors of the server (e.g. too few sites) propagate;
    what the run directory does not allow (a resume of nothing, or with other settings) is refused
    before Ray starts."""
    from flwr.simulation import run_simulation

    from mmfed.server.run import open_run
    from mmfed.server.rundir import held

    guard = held(Path(cfg.run_dir), create=False) if cfg.run_dir else contextlib.nullcontext()
    with guard:  # refused now if another run is using it
        open_run(cfg)  # reads only; the ServerApp opens it again, as under `flwr run`
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # each simulated site uses as many torch threads as the CPUs it was given, not the machine's
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(cpus_per_site)))
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        # Flower logs every message, and a failed site's traceback: our metrics say what matters
        flwr_logger.setLevel(logging.CRITICAL)
    result: dict[str, Any] = {}
    watcher = reaper.watch() if ray_address is None else None
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
    except RuntimeError as exc:
        if "Ending simulation" not in str(exc):  # the simulation engine's own failure, not the server's
            raise
        cause = exc.__cause__.__cause__ if exc.__cause__ is not None else None
        raise MMFedError(
            f"the simulation engine (Ray) stopped: {cause or exc}; rerun with --verbose to see Flower's log"
        ) from None
    finally:
        flwr_logger.setLevel(level)
        reaper.stop(watcher)
    return result
