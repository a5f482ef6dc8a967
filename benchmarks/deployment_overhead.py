"""Deployment round / simulated round on the same work: 3 fsdd-mnist speaker sites, 2 rounds, DP + SecAgg+.

Deployment: `deploy/loopback.py` (TLS SuperLink, node authentication, 3 SuperNodes on 127.0.0.1, each
ClientApp message in a fresh `flwr-clientapp` process, as Flower 1.42 does). Simulated: the same
ServerApp/ClientApp, run config and 3 site directories on the in-process grid of tests/localgrid.py (one
process, sites served one after another, model and data kept warm). Round 2 is compared (round 1 holds
start-up in both).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, shared_data, table  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))


def simulated_round(data: Path, work: Path) -> float:
    from localgrid import LocalGrid, server_context

    from mmfed.data.scenarios import prepare_scenario
    from mmfed.federation.config import FederationConfig
    from mmfed.server.apps import make_client_app, make_server_app

    sites = []
    for site in prepare_scenario("fsdd-mnist", data_dir=data).sites[:3]:
        copy = work / "sites" / site.name
        shutil.copytree(site, copy)
        # as the deployed sites are set up (deploy/loopback.py): the policy `mmfed site init` writes
        subprocess.run([str(REPO / ".venv" / "bin" / "mmfed"), "site", "init", "--dir", str(copy)],
                       check=True, capture_output=True, timeout=300)  # fmt: skip
        sites.append(copy)
    cfg = FederationConfig.from_mapping(
        {
            "rounds": 2,
            "scenario": "fsdd-mnist",
            "data-dir": str(data),
            "sites": 3,
            "min-sites": 3,
            "noise-multiplier": 1.0,
            "secure-aggregation": True,
            "run-dir": str(work / "run"),
        }
    )
    grid = LocalGrid(make_client_app(cfg), 3, node_configs=[{"site-dir": str(s)} for s in sites])
    try:
        make_server_app(cfg)(grid, server_context())
    finally:
        grid.close()
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    return next(r["seconds"] for r in rows if r["kind"] == "global" and r["round"] == 2)


def deployment_round(data: Path, work: Path, workers: bool) -> tuple[float, str]:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "loopback.py"),
            "--workdir",
            str(work),
            "--data-dir",
            str(data),
            *([] if workers else ["--no-workers"]),
        ],
        capture_output=True,
        text=True,
        timeout=3000,
    )
    if done.returncode != 0:
        raise RuntimeError(f"deploy/loopback.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    seconds = float(re.search(r"round 2: .*\(round (\d+) s\)", done.stdout).group(1))
    processes = re.search(r"\(one per message\): (\d+)", done.stdout).group(1)
    return seconds, processes


def main() -> str:
    data = shared_data()
    if data is None:
        return "## Deployment overhead\n\nskipped: ../shared/data not found\n"
    out = Path(tempfile.mkdtemp(prefix="mmfed-bench-deploy-"))
    t0 = time.perf_counter()
    simulated = simulated_round(data, out / "simulated")
    print(f"simulated round 2: {simulated:.0f}s", flush=True)
    warm, processes = deployment_round(data, out / "deployed-workers", workers=True)
    print(f"deployment round 2, site workers: {warm:.0f}s", flush=True)
    cold, cold_processes = deployment_round(data, out / "deployed", workers=False)
    print(f"deployment round 2, a process per message: {cold:.0f}s", flush=True)
    rows = [
        ["simulated (in-process grid, warm)", f"{simulated:.0f}", "1.00x"],
        [f"deployment, site workers (`mmfed site serve`; {processes} ClientApp processes in 2 rounds)",
         f"{warm:.0f}", f"{warm / simulated:.2f}x"],
        [f"deployment, training in each message's process ({cold_processes} ClientApp processes)",
         f"{cold:.0f}", f"{cold / simulated:.2f}x"],
    ]  # fmt: skip
    return "\n".join(
        [
            "## Deployment overhead",
            "",
            "`python benchmarks/deployment_overhead.py` — 3 fsdd-mnist speaker sites, 2 rounds, 1 local "
            "epoch, DP (σ = 1) and SecAgg+; the same apps, run config and site directories, deployed on "
            "127.0.0.1 (`deploy/loopback.py`, with and without site workers) and on the in-process grid. "
            "Round 2 wall time, measured side by side in one run:",
            "",
            table(["federation", "round 2 seconds", "ratio"], rows),
            "",
            f"Goal deployment (site workers) / simulated ≤ 1.5x: {'met' if warm / simulated <= 1.5 else 'not met'}. "
            "Flower 1.42 runs every ClientApp message in a fresh `flwr-clientapp` process (5 per site per "
            "round under SecAgg+). Without a worker each one imports torch and rebuilds the site's model and "
            "data; with `mmfed site serve` the ClientApp only forwards fit/evaluate to the site's warm worker, "
            "and what is left per message is Flower's process start and the SecAgg+ stages. The SuperNodes "
            "run in parallel (2 CPUs here) while the in-process grid serves sites one after another. "
            f"Measured in {time.perf_counter() - t0:.0f}s.",
        ]
    )
