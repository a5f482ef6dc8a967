"""`mmfed audit` over a generated ledger set: 100 sites x 1,000 rounds (100,000 signed entries).

Each site gets its own key, data fingerprint, sample rate and σ; entries are chained and signed exactly as
a site writes them (`mmfed.privacy.ledger.signed_entry`). `epsilon_rdp` is the true cumulative RDP ε of
every entry; `epsilon_prv` is the true PRV ε at the last round, and before it the RDP ε scaled by the
final PRV/RDP ratio (a stand-in: computing PRV 100,000 times would take hours; the default audit checks
it against the RDP bound, the thorough one recomputes the final PRV exactly).
Times the default audit and the thorough one (every signature; PRV and PLD recomputed) side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import table  # noqa: E402

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


def timed_audit(root: Path, *extra: str) -> tuple[float, int]:
    mmfed = Path(sys.executable).with_name("mmfed")
    t0 = time.perf_counter()
    done = subprocess.run([str(mmfed), "audit", str(root), "--format", "json", *extra], capture_output=True)
    return time.perf_counter() - t0, done.returncode


def main(sites: int = 100, rounds: int = 1000) -> str:
    root = Path(tempfile.mkdtemp(prefix="mmfed-bench-audit-"))
    t0 = time.perf_counter()
    generate(root, sites, rounds)
    generated = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in root.rglob("ledger.jsonl")) / 2**20
    rows = []
    for name, extra in [("default", ()), ("--thorough", ("--thorough",))]:
        seconds, code = timed_audit(root, *extra)
        rows.append([name, f"{seconds:.1f}", "passed" if code == 0 else f"FAILED (exit {code})"])
        print(name, f"{seconds:.1f}s", code, flush=True)
    return "\n".join(
        [
            "## Auditing 100 sites x 1,000 rounds",
            "",
            f"`python benchmarks/audit_scale.py` — {sites} sites x {rounds} rounds = {sites * rounds:,} signed, "
            f"chained entries ({size:.0f} MiB of JSONL, generated in {generated:.0f}s), each site with its own "
            "key, σ and sample rate. Wall time of the whole `mmfed audit DIR --format json` process "
            "(Python start and imports included):",
            "",
            table(["audit", "seconds", "result"], rows),
            "",
            "Default: the hash chain and the Ed25519 signature of every entry (since one budget per site: "
            "before, only each ledger's last signature, which the chain extends to every line but not to a "
            "history re-signed with another key), every entry's cumulative RDP ε recomputed with dp-accounting's RDP curves "
            "(vectorised over the entries) and the final one through dp-accounting's own conversion, PRV ≤ "
            "RDP and monotone for every entry, the persisted accountant and its high-water mark against the "
            "ledger. `--thorough` adds each site's final ε recomputed by Opacus (RDP and PRV) and dp-accounting's "
            "PLD accountant. "
            f"Goal ≤ 2 s for the default: {'met' if float(rows[0][1]) <= 2 else 'not met'} (the goal is "
            "issue 18's; the default now verifies 100,000 signatures, one at a time on one core). Where "
            "the time went before every signature was verified (profiled, 2026-11-28, 4.3 s): starting Python "
            "and importing numpy, cryptography and dp-accounting ~1.2 s; parsing 100,000 JSON lines (orjson) "
            "~0.5 s; the per-entry chain, index and field checks ~1 s; dp-accounting's RDP curve for each "
            "site's (σ, q) ~1.3 s (pure Python, exact for integer orders); the report ~0.3 s.",
        ]
    )


if __name__ == "__main__":
    print(main())
