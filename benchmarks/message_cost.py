"""What one deployed message costs a site, with and without its warm worker, at 1x and 10x the data.

A digits-av site (300 records) and a copy with every record repeated 10 times under new file names (3,000
records, 10x the bytes to read and fingerprint). Each message runs in a fresh Python process, as Flower
1.42's `flwr-clientapp` does: without a worker that process builds the site (torch, model, manifest, data
fingerprint) and trains; with `mmfed site serve` up, it only forwards the message to the worker. DP-SGD
(σ = 1) fit and evaluate messages of rounds 1-2 (a site evaluates each round's model once), interleaved,
side by side. The overhead of a fit message is its wall time less the local training the site logs (`train_seconds`): the goal is an
overhead that stays flat from 1x to 10x the data.

    .venv/bin/python benchmarks/message_cost.py
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, table  # noqa: E402

RUN = {"scenario": "digits-av", "sites": 2, "noise-multiplier": 1.0, "rounds": 3, "min-sites": 1}
ONE_MESSAGE = """
import json, sys, time
import numpy as np
from mmfed.federation.config import FederationConfig
from mmfed.site.client import SiteClient
site, op, rnd, weights = sys.argv[1], sys.argv[2], int(sys.argv[3]), np.load(sys.argv[4])
cfg = FederationConfig.from_mapping(json.loads(sys.argv[5]))
client = SiteClient(cfg, {"site-dir": site})
message = {"server-round": rnd, "run-id": "bench"}
arrays = [weights[k] for k in sorted(weights.files, key=int)]
out = client.fit(arrays, message) if op == "fit" else client.evaluate(arrays, message)
metrics = out[2]
assert "outcome" not in metrics, metrics
"""


def scaled_site(source: Path, dst: Path, times: int) -> Path:
    """`source` with each record repeated `times` times, every copy under its own file names; `mmfed site
    init` as a site's operator runs it (with a cap no benchmark round reaches)."""
    shutil.copytree(source, dst)
    with open(source / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for k in range(times):
        for row in rows:
            row = dict(row, id=f"{row['id']}_{k}")
            for column in ("image", "audio"):
                if k and row[column]:
                    copy = Path(row[column]).with_name(
                        f"{Path(row[column]).stem}_{k}{Path(row[column]).suffix}"
                    )
                    shutil.copy(source / row[column], dst / copy)
                    row[column] = str(copy)
            out.append(row)
    with open(dst / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(out)
    subprocess.run([str(REPO / ".venv" / "bin" / "mmfed"), "site", "init", "--dir", str(dst)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    policy = dst / "site.toml"
    policy.write_text(policy.read_text().replace("max_epsilon = 8.0", "max_epsilon = 100.0", 1))
    return dst


def train_seconds(site: Path, rnd: int) -> float:
    from mmfed.site import sitelog

    done = [e for e in sitelog.entries(site) if e["event"] == "released" and e.get("round") == rnd]
    return float(done[-1]["train_seconds"])


def message(site: Path, op: str, rnd: int, weights: Path) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", ONE_MESSAGE, str(site), op, str(rnd), str(weights), json.dumps(RUN)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{op} round {rnd} at {site.name} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def serve(site: Path, logfile: Path) -> subprocess.Popen:
    out = open(logfile, "w")  # noqa: SIM115 - the worker's log, open while it runs
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "mmfed"), "site", "serve", "--dir", str(site)],
                            stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    end = time.monotonic() + 300
    while "worker ready" not in logfile.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"the worker of {site} did not start: {logfile.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc


def main() -> str:
    import numpy as np
    import torch

    from mmfed.data.scenarios import prepare_scenario
    from mmfed.federation.config import FederationConfig
    from mmfed.federation.params import get_weights
    from mmfed.federation.run_task import run_task
    from mmfed.models import build_model

    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mmfed-bench-message-"))
    source = prepare_scenario("digits-av").sites[0]
    torch.manual_seed(0)
    model = build_model(run_task(FederationConfig.from_mapping(RUN)).model_config())
    weights = work / "weights.npz"
    np.savez(weights, **{str(i): w for i, w in enumerate(get_weights(model))})
    sites = {(scale, mode): scaled_site(source, work / f"{mode}-{scale}x", scale)
             for scale in (1, 10) for mode in ("cold", "warm")}  # fmt: skip
    workers = [serve(sites[(s, "warm")], work / f"worker-{s}x.log") for s in (1, 10)]
    walls: dict[tuple, list[float]] = {key: [] for key in sites}
    trains: dict[tuple, list[float]] = {key: [] for key in sites}
    evaluations: dict[tuple, list[float]] = {}
    try:
        for rnd in (1, 2):
            for key, site in sites.items():
                walls[key].append(message(site, "fit", rnd, weights))
                trains[key].append(train_seconds(site, rnd))
                print(
                    f"{key} round {rnd}: fit {walls[key][-1]:.1f} s (training {trains[key][-1]:.1f} s)",
                    flush=True,
                )
            for key, site in sites.items():  # a site evaluates each round's model once (its policy)
                evaluations.setdefault(key, []).append(message(site, "evaluate", rnd, weights))
    finally:
        for proc in workers:
            proc.terminate()
            proc.wait(timeout=30)
    rows, overhead = [], {}
    for scale, mode in sites:
        # round 2: the worker's first message also warms its caches for this run
        wall, train = walls[(scale, mode)][1], trains[(scale, mode)][1]
        overhead[(scale, mode)] = wall - train
        label = "site worker (`mmfed site serve`)" if mode == "warm" else "in the message's process"
        rows.append([f"{scale}x ({scale * 300} records)", label, f"{walls[(scale, mode)][0]:.1f}", f"{wall:.1f}",
                     f"{train:.1f}", f"{wall - train:.1f}", f"{evaluations[(scale, mode)][1]:.1f}"])  # fmt: skip
    flat = overhead[(10, "warm")] / overhead[(1, "warm")]
    cold_growth = overhead[(10, "cold")] / overhead[(1, "cold")]
    lines = [
        "## Cost of one message at a site",
        "",
        "`python benchmarks/message_cost.py` — " + __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        table(
            [
                "data",
                "message handled",
                "fit round 1 s",
                "fit round 2 s",
                "local training s (round 2)",
                "fit overhead s (round 2)",
                "evaluate s (round 2)",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"Fit overhead per message, worker vs in-process: {overhead[(1, 'cold')] / overhead[(1, 'warm')]:.1f}x "
        f"less at 1x, {overhead[(10, 'cold')] / overhead[(10, 'warm')]:.1f}x less at 10x. From 1x to 10x the "
        f"data the overhead grows {flat:.2f}x with the worker (goal: flat) and {cold_growth:.2f}x without. "
        f"Measured in {time.perf_counter() - t_all:.0f}s.",
    ]
    shutil.rmtree(work, ignore_errors=True)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
