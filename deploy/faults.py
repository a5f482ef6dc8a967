#!/usr/bin/env python3
"""Deployment faults on loopback: what a federation does when its processes die or hang, mid-run.

One TLS + node-auth SuperLink (its state in a database file, as a real one keeps it) and 3 digits-av sites
(the embedded data), each with its warm worker and SuperNode, all on 127.0.0.1. Each case runs the real
deployment (`flwr run`) and checks what the server recorded, the sites' ledgers (`mmfed audit`) and the
final model:

- kill-nodes:  DP + SecAgg+, 3 rounds; 1 of the 3 SuperNodes (33%) killed while its site trains round 1
               and restarted as a service manager would (the SuperLink refuses it until it has missed 2
               heartbeats, ~60 s). Round 1 completes with the other 2 (min-sites 2), the lost site is named
               (code `unreachable`), and it trains again in a later round.
- stop-node:   a hung site: its worker frozen (SIGSTOP) mid-training while its SuperNode still answers
               heartbeats; the server's round-timeout-s ends round 1 for it (code `timeout`), the run goes
               on, and the site, thawed, is consistent (audited).
- kill-worker: DP; a site's worker killed while it trains: that site's round-1 failure (code `worker`); the
               ClientApp trains in-process from then on (no worker), its ledger consistent (audited, and
               round 2 passes the budget's ledger check).
- kill-server: the SuperLink and the ServerApp killed once round 1 is committed, the SuperLink restarted
               (same database: it knows the sites again), the run resumed (`resume=true`) from its round-1
               checkpoint, untouched, to its end; a site that had trained the killed round keeps that spend
               in its ledger (audited). Bit-for-bit equality with an uninterrupted run holds without DP
               (tests/integration/test_faults.py); every deployed site enforces DP, whose noise is fresh.

Every process it starts (and every process those start) is stopped at the end.

    .venv/bin/python deploy/faults.py [--workdir DIR] [--case NAME ...]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from harness import Federation, log, run_script, signal_all, wait_for

SITES = 3
# every deployed site enforces DP (a site with a policy never releases a non-private update)
BASE = f"scenario='digits-av' sites={SITES} min-sites=2 site-wait-s=120 noise-multiplier=2.0"


def rows(run_dir: Path, **match) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    found = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    return [r for r in found if all(r.get(k) == v for k, v in match.items())]


def committed(run_dir: Path) -> int:
    """The last complete round of the run in run_dir (checkpoints/latest.json), 0 before the first."""
    try:
        return int(json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def until_committed(fed: Federation, run_id: str, run_dir: Path, rnd: int, what: str) -> None:
    """Until round `rnd` of the run is committed; an error if the run ends first."""

    def done() -> bool:
        if committed(run_dir) >= rnd:
            return True
        status = fed.status(run_id) or ""
        if status.startswith("finished"):
            raise RuntimeError(f"the run ended ({status}) before round {rnd} was committed")
        return False

    wait_for(done, 600, what, 2)


def fits(run_dir: Path, server_round: int) -> dict[str, tuple[str, str | None]]:
    return {r["site"]: (r["status"], r.get("code")) for r in rows(run_dir, kind="fit", round=server_round)}


def row_of(fed: Federation, rows: dict, site: str):
    """A site's row; a site lost before it ever replied is named by its node id."""
    return rows.get(site) or rows.get(f"node {fed.node_ids[site]}")


def audit(fed: Federation, name: str) -> int:
    done = subprocess.run(["mmfed", "audit", *map(str, fed.sites)], env=fed.env, cwd=fed.work,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    (fed.logs / f"audit_{name}.txt").write_text(done.stdout + done.stderr)
    return done.returncode


def ledger_lines(site: Path) -> int:
    ledger = site / "state" / "ledger.jsonl"
    return len(ledger.read_text().splitlines()) if ledger.exists() else 0


def when_busy(fed: Federation, i: int, timeout: float = 300) -> None:
    """Until site i's worker is working on a message (its first of the run: round 1's fit)."""
    wait_for(lambda: fed.worker_busy(i), timeout, f"{fed.sites[i].name} to start training", 0.1)


# -- the cases: each returns what went wrong (empty: passed) and one line of what happened ----------------
def kill_nodes(fed: Federation) -> tuple[list[str], str]:
    run_dir, victim = fed.work / "run-kill-nodes", 2
    run_id = fed.submit(f"{BASE} rounds=3 secure-aggregation=true round-timeout-s=120 run-dir='{run_dir}'")
    when_busy(fed, victim)
    t0 = time.monotonic()
    fed.signal_supernode(victim, signal.SIGKILL)
    log(f"killed the SuperNode of {fed.sites[victim].name} while it trained round 1")
    restarter = threading.Thread(target=fed.restart_supernode, args=(victim,), daemon=True)
    restarter.start()  # as its service manager would, while the server goes on
    until_committed(fed, run_id, run_dir, 1, "round 1 to complete without it")
    ended = time.monotonic() - t0
    status = fed.wait_run(run_id, 900)
    restarter.join(timeout=300)
    lost = fed.sites[victim].name
    row = row_of(fed, fits(run_dir, 1), lost)
    later = [r for r in (2, 3) if fits(run_dir, r).get(lost, ("?",))[0] == "accepted"]
    bad = [] if status == "finished:completed" else [f"run status {status}"]
    if not row or row[0] != "failed" or row[1] not in ("unreachable", "timeout"):
        bad.append(f"round 1: the killed site is recorded {row} (want failed, unreachable|timeout)")
    others = sorted(s.name for s in fed.sites if s.name != lost)
    if sorted(s for s, (st, _) in fits(run_dir, 1).items() if st == "accepted") != others:
        bad.append(f"round 1: the other sites' rows are {fits(run_dir, 1)}")
    if not later:
        bad.append(f"the restarted site trained no later round: {fits(run_dir, 2)} {fits(run_dir, 3)}")
    if code := audit(fed, "kill-nodes"):
        bad.append(f"mmfed audit exit {code}")
    fed.wait_online(SITES)
    return bad, f"round 1 ended {ended:.0f} s after the kill: {row}; back and trained in round(s) {later}"


def stop_node(fed: Federation) -> tuple[list[str], str]:
    """A hung site: its worker frozen mid-training, its SuperNode still answering heartbeats, so only the
    server's round timeout can end the round for it."""
    run_dir, victim = fed.work / "run-stop-node", 1
    run_id = fed.submit(f"{BASE} rounds=2 round-timeout-s=150 run-dir='{run_dir}'")
    when_busy(fed, victim)
    signal_all([fed.workers[victim]], [], signal.SIGSTOP)
    t0 = time.monotonic()
    log(f"froze the worker of {fed.sites[victim].name} (SIGSTOP) while it trained round 1")
    frozen = fed.sites[victim].name
    try:  # thawed once the server has given up on its round-1 fit (else evaluation waits for it too)
        wait_for(lambda: row_of(fed, fits(run_dir, 1), frozen), 600, "round 1's fit to end without it", 1)
    finally:
        ended = time.monotonic() - t0
        signal_all([fed.workers[victim]], [], signal.SIGCONT)
    status = fed.wait_run(run_id, 900)
    row = row_of(fed, fits(run_dir, 1), frozen)
    bad = [] if status == "finished:completed" else [f"run status {status}"]
    if row != ("failed", "timeout"):
        bad.append(f"round 1: the frozen site is recorded {row} (want failed, timeout)")
    if committed(run_dir) != 2:
        bad.append(f"the run committed {committed(run_dir)} rounds (want 2)")
    if code := audit(fed, "stop-node"):
        bad.append(f"mmfed audit exit {code}")
    return bad, f"round 1's fit ended {ended:.0f} s after the freeze: {row}"


def kill_worker(fed: Federation) -> tuple[list[str], str]:
    run_dir, victim = fed.work / "run-kill-worker", 0
    before = ledger_lines(fed.sites[victim])
    run_id = fed.submit(f"{BASE} rounds=2 round-timeout-s=300 run-dir='{run_dir}'")
    when_busy(fed, victim)
    fed.kill_worker(victim)
    log(f"killed the worker of {fed.sites[victim].name} while it trained round 1")
    status = fed.wait_run(run_id, 600)
    site = fed.sites[victim].name
    first, second = fits(run_dir, 1), fits(run_dir, 2)
    bad = [] if status == "finished:completed" else [f"run status {status}"]
    if first.get(site) != ("failed", "worker"):
        bad.append(f"round 1: the site is recorded {first.get(site)} (want failed, worker)")
    if second.get(site, ("?",))[0] != "accepted":  # in-process now; the budget checked the ledger first
        bad.append(f"round 2: the site is recorded {second.get(site)} (want accepted, in-process)")
    added = ledger_lines(fed.sites[victim]) - before
    if added not in (1, 2):  # round 2's entry, and round 1's if the kill came after it was written
        bad.append(f"the site's ledger grew by {added} entries in this run (want 1 or 2)")
    if code := audit(fed, "kill-worker"):
        bad.append(f"mmfed audit exit {code}")
    fed.start_worker(victim)
    fed.wait_worker(victim)
    return bad, f"killed worker: round 1 {first.get(site)}, round 2 {second.get(site)}, ledger +{added}"


def kill_server(fed: Federation) -> tuple[list[str], str]:
    import hashlib

    run_dir = fed.work / "run-kill-server"
    settings = f"{BASE} rounds=2 round-timeout-s=300 run-dir='{run_dir}'"
    before = {s.name: ledger_lines(s) for s in fed.sites}
    run_id = fed.submit(settings)
    until_committed(fed, run_id, run_dir, 1, "round 1 to be committed")
    killed = fed.kill_superlink()
    log(f"killed the SuperLink and the ServerApp ({killed} processes) after round 1")
    first = run_dir / "checkpoints" / "round_0001.safetensors"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    fed.start_superlink()  # the same --database: it knows the sites again; their SuperNodes reconnect
    fed.wait_online(SITES)
    status = fed.wait_run(fed.submit(f"{settings} resume=true"), 600)
    bad = [] if status == "finished:completed" else [f"resumed run status {status}"]
    resumed = (json.loads((run_dir / "config.json").read_text()).get("resumed") or [{}])[-1]
    if resumed.get("from_round") != 1:
        bad.append(f"the resumed run started from {resumed} (want round 1)")
    if hashlib.sha256(first.read_bytes()).hexdigest() != digest:
        bad.append("the committed round-1 checkpoint changed when the run was resumed")
    summary = (
        json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    )
    if summary.get("rounds_completed") != 2:
        bad.append(f"summary: rounds_completed={summary.get('rounds_completed')} (want 2)")
    # a site that trained the killed round 2 spent its ε: that entry stays, and round 2 is spent again
    spent = {s.name: ledger_lines(s) - before[s.name] for s in fed.sites}
    if any(n not in (2, 3) for n in spent.values()):
        bad.append(
            f"ledger entries written in this run per site: {spent} (want 2, or 3 with the killed round)"
        )
    if code := audit(fed, "kill-server"):
        bad.append(f"mmfed audit exit {code}")
    return bad, f"resumed from round {resumed.get('from_round')}; ledger entries per site in this run {spent}"


CASES = {
    "kill-nodes": kill_nodes,
    "stop-node": stop_node,
    "kill-worker": kill_worker,
    "kill-server": kill_server,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    ap.add_argument("--case", action="append", choices=list(CASES), help="run only these (default: all)")
    args = ap.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="mmfed-faults-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"workdir {work}")
    fed = Federation(work, "", "digits-av", SITES, database=True)
    fed.setup()
    fed.up()
    results = {}
    for name in args.case or list(CASES):
        t0 = time.monotonic()
        try:
            bad, what = CASES[name](fed)
        except (RuntimeError, TimeoutError, OSError) as exc:
            bad, what = [f"{type(exc).__name__}: {exc}"], "did not finish"
        results[name] = (bad, what, time.monotonic() - t0)
        log(f"case {name}: {'PASS' if not bad else 'FAIL'} ({what})")
    print("\n=== mmfed deployment faults (loopback, Flower 1.42, TLS + SuperNode auth, warm workers) ===")
    for name, (bad, what, secs) in results.items():
        print(f"case {name}: {'PASS' if not bad else 'FAIL'} in {secs:.0f} s: {what}")
        for b in bad:
            print(f"    {b}")
    failed = [n for n, (bad, _, _) in results.items() if bad]
    print("RESULT: " + ("PASS" if not failed else f"FAIL ({', '.join(failed)})"))
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)
