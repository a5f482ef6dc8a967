"""Deployment faults on loopback (deploy/faults.py): a TLS + node-auth SuperLink and 3 digits-av sites,
each with its warm worker and SuperNode, on 127.0.0.1. A SuperNode killed mid-round (the round completes
with the others, the site is named and rejoins), a frozen SuperNode (the round timeout ends the round), a
worker killed while it trains (the site's failure, its ledger consistent), and the SuperLink + ServerApp
killed after round 1 (resumed, the same final model as an uninterrupted run). The script stops every
process it started, also on failure."""

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = ("kill-nodes", "stop-node", "kill-worker", "kill-server")


@pytest.mark.slow
def test_a_deployment_survives_killed_frozen_and_restarted_processes(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "faults.py"), "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    report = done.stdout[-6000:] + done.stderr[-2000:]
    for case in CASES:
        assert f"case {case}: PASS" in done.stdout, report
    assert done.returncode == 0 and "RESULT: PASS" in done.stdout, report
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and str(tmp_path) in " ".join(p.info["cmdline"])
    ]
    assert not leftovers, leftovers
