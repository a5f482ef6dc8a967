"""Reliability campaign: bad inputs and faults as a hospital's IT would produce them, each run as the user
would run it (the `mmfed` command in a fresh scratch directory), and classified:

- clean error: refused with exit code 2 (1 for a check that reports findings), a message, no traceback;
- survived: a fault the system is built to survive (a killed site, a resumed server) ended as it should;
- silently accepted: bad input that was not refused;
- traceback: a Python traceback reached the screen (or the exit code is neither 0, 1 nor 2);
- data lost: a file the user had (every file the case set up, unless the case says otherwise) changed or
  disappeared.

Cases live in reliability_cases/ (one module per category, each with a CASES list).
`python benchmarks/reliability.py [CATEGORY...]` prints the table; `make bench` writes it to BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, table  # noqa: E402

CATEGORIES = ["data_files", "settings", "paths", "keys_certs", "resume", "faults"]
OUTCOMES = ("clean error", "survived", "silently accepted", "traceback", "data lost")


@dataclass
class Run:
    """What a case's command did."""

    code: int
    output: str
    seconds: float


@dataclass
class Case:
    """One bad input or fault. `setup(work)` builds the inputs in `work` and returns the `mmfed` arguments;
    `run` replaces the plain command run for faults (kill a process, fill a disk) and returns a Run.
    `expect`: "error" (must be refused) or "ok" (must survive). `check(work, run)`: an extra condition
    for "ok" cases (e.g. the same final model); `mutable`: paths (relative to work) the command may
    change (its own outputs)."""

    name: str
    setup: Callable[[Path], list[str]]
    expect: str = "error"
    wants: str = ""  # a phrase the error message must contain (e.g. the file or setting it names)
    run: Callable[[Path, list[str]], Run] | None = None
    check: Callable[[Path, Run], str | None] | None = None  # None: fine; else what went wrong
    mutable: tuple[str, ...] = ()
    category: str = ""
    extra: dict = field(default_factory=dict)


def mmfed(work: Path, args: list[str], timeout: float = 600, env: dict | None = None) -> Run:
    """The `mmfed` command, as a user runs it, in `work`."""
    exe = shutil.which("mmfed", path=str(Path(sys.executable).parent)) or "mmfed"
    start = time.perf_counter()
    environment = {
        **os.environ,
        "HOME": str(work / "home"),
        "MMFED_CACHE_DIR": str(work / "cache"),
        **(env or {}),
    }
    try:
        done = subprocess.run(
            [exe, *args], cwd=work, capture_output=True, text=True, timeout=timeout, env=environment
        )
        return Run(done.returncode, done.stdout + done.stderr, time.perf_counter() - start)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        return Run(-9, output + "\n[timed out]", time.perf_counter() - start)


def snapshot(work: Path, mutable: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under work, except caches, the fake home and the case's own outputs."""
    skip = ("home", "cache", *mutable)
    out = {}
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work).as_posix()
        if path.is_file() and not any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in skip):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def classify(
    case: Case, before: dict[str, str], after: dict[str, str], run: Run, work: Path
) -> tuple[str, str]:
    lost = sorted(k for k, v in before.items() if after.get(k) != v)
    if lost:
        return "data lost", f"changed or removed: {lost[:3]}"
    if "Traceback (most recent call last)" in run.output or run.code not in (0, 1, 2):
        return (
            "traceback",
            f"exit {run.code}: {run.output.strip().splitlines()[-1][:160] if run.output.strip() else ''}",
        )
    if case.expect == "error":
        if run.code == 0:
            return "silently accepted", run.output.strip().splitlines()[-1][
                :160
            ] if run.output.strip() else ""
        if case.wants and case.wants.lower() not in " ".join(run.output.split()).lower():
            return "silently accepted", f"refused without naming {case.wants!r}: {run.output.strip()[-160:]}"
        return "clean error", run.output.strip().splitlines()[-1][:160] if run.output.strip() else ""
    problem = case.check(work, run) if case.check else (None if run.code == 0 else f"exit {run.code}")
    return ("survived", "") if problem is None else ("silently accepted", problem)


def load_cases(categories: list[str]) -> list[Case]:
    cases = []
    for category in categories:
        module = importlib.import_module(f"reliability_cases.{category}")
        for case in module.CASES:
            case.category = category
            cases.append(case)
    return cases


def run_case(case: Case, root: Path) -> tuple[str, str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"{case.category}-", dir=root))
    (work / "home").mkdir()
    try:
        args = case.setup(work)
        before = snapshot(work, case.mutable)
        run = case.run(work, args) if case.run else mmfed(work, args)
        after = snapshot(work, case.mutable)
        outcome, detail = classify(case, before, after, run, work)
        return outcome, detail, run.seconds
    except Exception as exc:  # noqa: BLE001 - a broken case is reported, and counted as a traceback
        return "traceback", f"the case itself failed: {type(exc).__name__}: {exc}", 0.0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def campaign(categories: list[str], verbose: bool = True) -> list[tuple[Case, str, str, float]]:
    root = Path(tempfile.mkdtemp(prefix="mmfed-reliability-"))
    results = []
    try:
        for case in load_cases(categories):
            outcome, detail, seconds = run_case(case, root)
            results.append((case, outcome, detail, seconds))
            if verbose:
                print(f"  {case.category:>11} {outcome:>17}  {case.name}  {detail[:100]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def report(results: list[tuple[Case, str, str, float]]) -> str:
    rows = []
    for category in dict.fromkeys(c.category for c, *_ in results):
        mine = [o for c, o, *_ in results if c.category == category]
        rows.append([category.replace("_", " "), len(mine), *(mine.count(o) for o in OUTCOMES)])
    total = [o for _, o, *_ in results]
    rows.append(["**all**", len(total), *(total.count(o) for o in OUTCOMES)])
    bad = [(c, o, d) for c, o, d, _ in results if o in ("silently accepted", "traceback", "data lost")]
    lines = [
        "## Reliability: bad inputs and faults",
        "",
        "`benchmarks/reliability.py` runs every case of `benchmarks/reliability_cases/` as a user would (the "
        "`mmfed` command in a fresh directory) and classifies it. Goal: 0 silently accepted, 0 tracebacks, "
        "0 data lost.",
        "",
        table(["category", "tried", *OUTCOMES], rows),
    ]
    if bad:
        lines += ["", "Open cases:", ""] + [f"- {c.category}/{c.name}: {o} ({d})" for c, o, d in bad]
    return "\n".join(lines)


def main(categories: list[str] | None = None) -> str:
    return report(campaign(categories or CATEGORIES))


if __name__ == "__main__":
    os.chdir(REPO)
    print(main(sys.argv[1:] or None))
