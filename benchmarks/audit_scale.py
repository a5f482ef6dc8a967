"""`mmfed audit` over a generated ledger set: 100 sites x 1,000 rounds (100,000 signed entries).

Each site gets its own key, data fingerprint, sample rate and σ; entries are chained and signed exactly as
a site writes them (`mmfed.privacy.ledger.signed_entry`). `epsilon_rdp` is the true cumulative RDP ε of
every entry; `epsilon_prv` is the true PRV ε at the last round, and before it the RDP ε scaled by the
final PRV/RDP ratio (a stand-in: computing PRV 100,000 times would take hours; the default audit checks
it against the RDP bound, the thorough one recomputes the final PRV exactly).
Times the default audit and the thorough one (every signature; PRV and PLD recomputed), and the default
with each of issue 18's levers switched back to the code it replaced (`LEVERS`), side by side.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import median, table  # noqa: E402

from mmfed.privacy import accounting, ledger, site_keys  # noqa: E402
from mmfed.privacy.budget import BUDGET, LEDGER  # noqa: E402
from mmfed.privacy.policy import SitePolicy  # noqa: E402

DELTA = 1e-5


def generate(root: Path, sites: int, rounds: int, steps: int = 8) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rng = np.random.default_rng(0)
    orders = list(accounting.RDP_ORDERS)
    for s in range(sites):
        home = root / f"site_{s:03d}"
        home.mkdir(parents=True)
        (home / "site.toml").write_text(SitePolicy(max_epsilon=1e6, delta=DELTA).template())
        key = site_keys.create_key(home)
        q = 1 / int(rng.integers(4, 40))
        sigma = float(np.round(rng.uniform(1.5, 4.0), 3))
        per_step = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders))
        fingerprint = "sha256:" + f"{s:064x}"
        history = [(sigma, q, steps * rounds)]
        final_rdp = float(get_privacy_spent(orders=orders, rdp=per_step * steps * rounds, delta=DELTA)[0])
        ratio = accounting.epsilon_prv(history, DELTA) / final_rdp  # exact PRV at the end
        lines, prev = [], ledger.GENESIS
        for r in range(1, rounds + 1):
            eps_rdp = float(get_privacy_spent(orders=orders, rdp=per_step * steps * r, delta=DELTA)[0])
            fields = {
                "run_id": "bench",
                "round": r,
                "time": f"2026-11-28T{r // 3600:02d}:{r // 60 % 60:02d}:{r % 60:02d}+00:00",
                "site": home.name,
                "data_fingerprint": fingerprint,
                "budget": "site",
                "noise_multiplier": sigma,
                "sample_rate": q,
                "steps": steps,
                "max_grad_norm": 1.0,
                "delta": DELTA,
                "epsilon_prv": eps_rdp * ratio,
                "epsilon_rdp": eps_rdp,
                "max_epsilon": 1e6,
                "accountant": {"prv": {"eps_error": accounting.PRV_EPS_ERROR}, "rdp": {"orders": orders}},
            }
            entry = ledger.signed_entry(fields, key, r - 1, prev)
            line = ledger.canonical(entry)
            prev = ledger.line_hash(line)
            lines.append(line)
        (home / "state").mkdir()
        (home / LEDGER).write_bytes(b"\n".join(lines) + b"\n")
        state = {
            "site": home.name,
            "delta": DELTA,
            "accountant": {"mechanism": "prv", "history": history},
            "ledger_head": {"index": rounds - 1, "hash": prev},
        }
        (home / BUDGET).write_text(json.dumps(state))


# Each lever of issue 18 can be switched back to the code it replaced, here only (not in the product), so
# that the audit is timed with and without it side by side.
LEVERS = {
    "threads": "signatures verified in threads on every core (OpenSSL releases Python's lock)",
    "cut": "signed bytes cut out of the line instead of re-serialised (canonical JSON)",
    "rdp-only": "dp-accounting's RDP module imported alone, not the whole package (scipy.stats, scipy.signal)",
    "collector": "the cyclic garbage collector kept off what the audit builds",
}
_RUNNER = """
import sys, runpy
off = set(filter(None, sys.argv[1].split(",")))
from mmfed.audit import check
from mmfed.privacy import entry_signatures as sig
if "threads" in off:  # one thread, as before
    sig._in_parallel = sig._verify_all
if "cut" in off:  # the canonical JSON of every entry, as before
    sig.signed_bytes = lambda line, e: sig.canonical({k: v for k, v in e.items() if k != "signature"})
if "rdp-only" in off:  # the whole package, as before
    import dp_accounting
if "collector" in off:  # the collector as Python leaves it, as before
    check.audit_ledger = lambda p, h, k=None, t=False: check._audit_ledger(p, h, k, t)
sys.argv = ["mmfed", *sys.argv[2:]]
runpy.run_module("mmfed.cli", run_name="__main__")
"""


def timed_audit(root: Path, *extra: str, off: tuple[str, ...] | None = None) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the process, exit code) of `mmfed audit ROOT --format json`; with
    `off`, through the runner above with those levers switched back."""
    if off is None:
        command = [str(Path(sys.executable).with_name("mmfed"))]
    else:
        command = [sys.executable, "-c", _RUNNER, ",".join(off)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([*command, "audit", str(root), "--format", "json", *extra], capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def verify_cost(n: int = 3000) -> float:
    """Seconds of one Ed25519 verification (cryptography/OpenSSL, one thread) over a ledger-sized entry."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    message = b"x" * 750
    signature, public = key.sign(message), key.public_key()
    t0 = time.process_time()
    for _ in range(n):
        public.verify(signature, message)
    return (time.process_time() - t0) / n


def main(sites: int = 100, rounds: int = 1000, repeats: int = 3) -> str:
    root = Path(tempfile.mkdtemp(prefix="mmfed-bench-audit-"))
    t0 = time.perf_counter()
    generate(root, sites, rounds)
    generated = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in root.rglob("ledger.jsonl")) / 2**20
    entries = sites * rounds
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = [os.getloadavg()[0]]
    seconds, cpu, code = timed_audit(root, "--thorough")
    thorough = [
        "--thorough",
        f"{seconds:.1f}",
        f"{cpu:.1f}",
        "passed" if code == 0 else f"FAILED (exit {code})",
    ]
    print("thorough", f"{seconds:.1f}s", code, flush=True)
    # the levers: all on, each one off, all off (the code before issue 18), round-robin, with the real
    # `mmfed audit` (its console script, no runner: None) among them
    variants: dict[str, tuple[str, ...] | None] = {
        "default": None,
        "all levers on": (),
        **{f"without: {k}": (k,) for k in LEVERS},
        "all levers off": tuple(LEVERS),
    }
    walls: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    codes: set[int] = set()
    for _ in range(repeats):
        for name, off in variants.items():
            wall, cpu, code = timed_audit(root, off=off)
            codes.add(code)
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(name, f"{wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
        load.append(os.getloadavg()[0])
    result = "passed" if codes == {0} else f"FAILED (exit {sorted(codes)})"
    rows = [
        ["default", f"{median(walls['default']):.1f}", f"{median(cpus['default']):.1f}", result],
        thorough,
    ]
    del variants["default"]
    base_wall, base_cpu = median(walls["all levers on"]), median(cpus["all levers on"])
    lever_rows = [
        [
            name,
            f"{median(walls[name]):.1f}",
            f"{median(walls[name]) / base_wall:.2f}",
            f"{median(cpus[name]):.1f}",
            f"{median(cpus[name]) / base_cpu:.2f}",
        ]
        for name in variants
    ]
    per_verify = verify_cost()
    floor = entries * per_verify
    default_wall = float(rows[0][1])
    met = default_wall <= 2
    return "\n".join(
        [
            "## Auditing 100 sites x 1,000 rounds",
            "",
            f"`python benchmarks/audit_scale.py` — {sites} sites x {rounds} rounds = {entries:,} signed, "
            f"chained entries ({size:.0f} MiB of JSONL, generated in {generated:.0f}s), each site with its own "
            "key, σ and sample rate. Wall time and CPU time (all threads) of the whole `mmfed audit DIR "
            f"--format json` process (Python start and imports included; default: median of {repeats} runs). "
            f"The machine was shared: load average {min(load):.1f}–{max(load):.1f} during the run on "
            f"{cores} CPU threads, so absolute times are inflated"
            + (" and the verification threads find no free core:" if min(load) >= cores else ":"),
            "",
            table(["audit", "wall seconds", "CPU seconds", "result"], rows),
            "",
            "Default: the hash chain and the Ed25519 signature of every entry, every entry's cumulative RDP ε "
            "recomputed with dp-accounting's RDP curves (one per distinct (σ, q), vectorised over the "
            "entries) and the final one through dp-accounting's own conversion, PRV ≤ RDP and monotone for "
            "every entry, the persisted accountant and its high-water mark against the ledger. `--thorough` "
            "adds each site's final ε recomputed by Opacus (RDP and PRV) and dp-accounting's PLD accountant.",
            "",
            f"Issue 18's levers, each switched back to the code it replaced (in this script only) and timed "
            f"side by side, {repeats} round-robin runs each, median; ratios against all levers on:",
            "",
            table(["variant", "wall s", "wall ratio", "CPU s", "CPU ratio"], lever_rows),
            "",
            *(f"- {k}: {v}" for k, v in LEVERS.items()),
            "",
            "Where the time goes (cProfile of the default audit, 2026-12-02, before the levers): verifying "
            "100,000 signatures one by one (~75% of the CPU time), serialising each entry again as canonical "
            "JSON to check its signature over it (~15%), parsing the lines and checking their fields (~8%, "
            "of which the garbage collector rescanning the growing set of parsed entries about half), "
            "importing dp-accounting's whole package (~1 s of wall time: its PLD and calibration code pulls "
            "in scipy.stats and scipy.signal, which the default audit never uses), dp-accounting's RDP curve "
            "of each site's (σ, q) (~0.3 s, pure Python, once per distinct (σ, q)), the report's per-round "
            "rows (~0.3 s), starting Python and importing the CLI (~0.5 s).",
            "",
            f"Goal ≤ 2 s for the default: **{'met' if met else 'not met'}** ({default_wall:.1f} s). "
            + (
                ""
                if met
                else f"One Ed25519 verification costs {per_verify * 1e6:.0f} µs of CPU here (OpenSSL via "
                f"cryptography, measured in this run), so {entries:,} of them are {floor:.1f} CPU seconds: "
                f"at least {floor / cores:.1f} s of wall time on this machine's {cores} CPU threads, which "
                "other jobs share, before anything else is done. Every signature is verified (none skipped, "
                "none sampled), so the goal needs more cores (the verification threads scale with them), a "
                "faster verifier, or batch verification (one multi-scalar check over many signatures of the "
                "same key, ~2x less work per signature), which cryptography does not offer."
            ),
        ]
    )


if __name__ == "__main__":
    print(main())
