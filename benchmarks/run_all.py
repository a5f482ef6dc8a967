"""`make bench`: run every benchmark and write BENCHMARKS.md at the repository root."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import audio_features  # noqa: E402
import centralized_accuracy  # noqa: E402
import dp_step  # noqa: E402
import torch  # noqa: E402
from common import REPO  # noqa: E402


def main() -> None:
    sections = []
    for module in (audio_features, dp_step, centralized_accuracy):
        t0 = time.perf_counter()
        print(f"running {module.__name__} ...", flush=True)
        sections.append(module.main())
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
    header = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run_all.py`); each section names the script that measures it. "
        "Ratios are measured side by side in one process; absolute times on a shared machine mean little.",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    (REPO / "BENCHMARKS.md").write_text("\n".join(header) + "\n\n".join(sections) + "\n")
    print(f"wrote {REPO / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
