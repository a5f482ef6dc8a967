"""The loopback deployment (deploy/loopback.py): a TLS SuperLink with SuperNode authentication and 3
authenticated SuperNodes on 127.0.0.1, each next to its own fsdd-mnist site directory; 2 rounds with DP
and SecAgg+; ledgers that `mmfed audit` verifies; and unregistered, CA-less and plain-text SuperNodes
rejected. The script stops every process it started, also on failure."""

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_loopback_deployment_with_tls_node_auth_dp_and_secagg(tmp_path, shared_data):
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "loopback.py"), "--workdir", str(tmp_path / "w"),
         "--data-dir", str(shared_data), "--timeout", "1500"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    report = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0 and "RESULT: PASS" in done.stdout, report
    for case in ("a_unregistered_key", "b_no_ca_certificate", "c_insecure"):
        assert f"negative {case}: exit" in done.stdout, report
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"]
        and any("flower-super" in c or "flwr-clientapp" in c for c in p.info["cmdline"])
        and str(tmp_path) in " ".join(p.info["cmdline"])
    ]
    assert not leftovers, leftovers
