"""`make bench`: run the benchmarks and write BENCHMARKS.md at the repository root.

`python benchmarks/run_all.py NAME...` reruns only the named ones (e.g. `dp_step federation_scale`) and
replaces their sections, keeping the others as they were.
"""

from __future__ import annotations

import importlib
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import REPO  # noqa: E402

ORDER = [
    "audio_features",
    "dp_step",
    "centralized_accuracy",
    "federation_accuracy",
    "federation_scale",
    "dp_accuracy",
    "audit_scale",
    "secagg_overhead",
    "deployment_overhead",
    "message_cost",
    "missing_modality",
    "covid_cxr",
    "minilm_dp",
    "deployment_optimisation",
    "reliability",
    "empirical_audit",
]
TARGET = REPO / "BENCHMARKS.md"


def read_sections() -> dict[str, str]:
    if not TARGET.exists():
        return {}
    text = TARGET.read_text()
    found = re.findall(r"<!-- section:(\w+) -->\n(.*?)<!-- /section -->", text, flags=re.S)
    return dict(found)


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {ORDER}")
    done: dict[str, str] = {}
    for name in names or ORDER:
        t0 = time.perf_counter()
        print(f"running {name} ...", flush=True)
        body = importlib.import_module(name).main()
        stamp = f"_Measured {time.strftime('%Y-%m-%d')} in {time.perf_counter() - t0:.0f}s._"
        done[name] = f"{body}\n\n{stamp}\n"
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
    # read the file only now: a section another run wrote in the meantime is kept
    sections = {**read_sections(), **done}
    header = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run_all.py`); each section names the script that measures it and "
        "can be rerun alone (`python benchmarks/run_all.py NAME`). Ratios are measured side by side in one "
        "process; absolute times on a shared 2-core machine mean little.",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        f"torch {torch.__version__}.",
        "",
    ]
    body = "\n".join(
        f"<!-- section:{n} -->\n{sections[n]}<!-- /section -->\n" for n in ORDER if n in sections
    )
    TARGET.write_text("\n".join(header) + "\n" + body)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main(sys.argv[1:])
