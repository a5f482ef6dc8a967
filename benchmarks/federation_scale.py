"""One round with 100 and with 1,000 `synthetic` sites: wall time and peak memory (all processes).

Peak RSS is sampled every 0.2 s over this process and all its children (Ray's raylet, GCS, workers), so
it is the machine's cost of the simulation, not only the driver's.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from common import table  # noqa: E402

from mmfed.federation.config import FederationConfig  # noqa: E402
from mmfed.server.simulation import simulate  # noqa: E402

SAMPLES = 20  # per site
DISCUSSION = (
    "Memory is measured over this process and all its children (Ray's GCS, raylet, dashboard agents, the "
    "site workers), sampled every 0.5 s. PSS splits shared pages (torch's libraries, mapped by every "
    "process) between the processes that map them; the RSS sum counts them once per process and overstates. "
    "Accuracy after one round of 16 training samples per site is not the point here.\n\n"
    "What limits it: sites run one per CPU (2 here), so wall time grows linearly with the number of sites, "
    "and each site's data is generated and decoded on first use (inside the measured time). Each worker "
    "keeps at most 8 sites' data and one model, so per-site state does not accumulate; the fixed part is Ray "
    "(~1 GiB of processes) plus one torch process per CPU (torch's CUDA wheel is large). What grows with the "
    "number of sites is the server: Flower's legacy workflow collects every site's update of the round "
    "before aggregating (1,000 updates of this model, in Flower's message form and as arrays), which is "
    "most of the difference between 100 and 1,000 sites. Streaming aggregation (folding each update into "
    "the sum as it arrives) would remove that, but needs a custom workflow."
)


class PeakRSS:
    """Peak over time of the summed RSS (counts shared library pages once per process, so it overstates)
    and of the summed PSS (shared pages split between the processes that map them: the machine's cost)."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = pss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    total += info.rss
                    pss += getattr(info, "pss", info.rss)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(0.5)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(sizes: tuple[int, ...] = (100, 1000)) -> str:
    rows = []
    cache = Path(tempfile.mkdtemp(prefix="mmfed-bench-scale-"))
    for n in sizes:
        cfg = FederationConfig(
            scenario="synthetic",
            sites=n,
            modalities="image,audio",
            fusion="late",
            rounds=1,
            local_epochs=1,
            batch_size=16,
            min_sites=max(2, n // 2),
            cache_dir=str(cache),
            run_dir=str(cache / f"run{n}"),
            augment=False,
            site_wait_s=600,
            samples_per_site=SAMPLES,
        )
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            summary = simulate(cfg, cpus_per_site=1.0)
            wall = time.perf_counter() - t0
        rows.append(
            [
                n,
                f"{wall:.0f}",
                f"{wall / n * 1000:.0f}",
                f"{rss.peak_pss / 2**30:.2f}",
                f"{rss.peak / 2**30:.2f}",
                f"{summary['global_accuracy']:.2%}",
            ]
        )
        print(
            f"{n} sites: {wall:.0f}s, peak PSS {rss.peak_pss / 2**30:.2f} GiB, RSS {rss.peak / 2**30:.2f} GiB",
            flush=True,
        )
        last_pss = rss.peak_pss
    return "\n".join(
        [
            "## Federation scale: one round with many sites",
            "",
            f"`python benchmarks/federation_scale.py` — `synthetic` scenario, image+audio, late fusion, {SAMPLES} samples "
            "per site (written on first use, inside the measured time), 1 round: every site trains 1 local epoch "
            "and is evaluated. Ray on this machine's CPUs, one site per CPU at a time.",
            "",
            table(
                [
                    "sites",
                    "wall seconds",
                    "ms per site",
                    "peak PSS, all processes (GiB)",
                    "peak RSS sum (GiB)",
                    "accuracy",
                ],
                rows,
            ),
            "",
            DISCUSSION,
            "",
            f"Goal for {sizes[-1]:,} sites, ≤ 3 GiB: **{'met' if last_pss <= 3 * 2**30 else 'not met'}** "
            f"({last_pss / 2**30:.2f} GiB peak PSS).",
        ]
    )


if __name__ == "__main__":
    print(main(tuple(int(a) for a in sys.argv[1:]) or (100, 1000)))
