"""Audio feature extraction: clips/s with a cold cache vs the content-hash disk cache, side by side.

Cold = decode + resample + trim + log-mel (what the first epoch pays); cached = what every later epoch
and every later run pays. Uses FSDD clips from ../shared/data when present, else the embedded digits-av.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import shared_data, table  # noqa: E402

from mmfed.config import AudioSpec  # noqa: E402
from mmfed.data.audio import AudioProcessor  # noqa: E402


def clips(n: int) -> tuple[str, list[Path]]:
    data = shared_data()
    if data is not None:
        return "FSDD (8 kHz wav)", sorted((data / "fsdd" / "recordings").glob("*.wav"))[:n]
    from mmfed.data.scenarios import prepare_scenario

    sites = prepare_scenario("digits-av").sites
    return "digits-av (8 kHz wav)", sorted(p for s in sites for p in (s / "audio").glob("*.wav"))[:n]


def main(n: int = 300, rounds: int = 3) -> str:
    source, paths = clips(n)
    spec = AudioSpec()
    rows = []
    cold_rates, warm_rates = [], []
    for r in range(rounds):
        cache = Path(tempfile.mkdtemp(prefix="mmfed-bench-audio-"))
        try:
            t0 = time.perf_counter()
            proc = AudioProcessor(spec, cache)
            for p in paths:
                proc(p)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            proc = AudioProcessor(spec, cache)  # a new processor: nothing in memory, only the disk cache
            for p in paths:
                proc(p)
            warm = time.perf_counter() - t0
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        cold_rates.append(len(paths) / cold)
        warm_rates.append(len(paths) / warm)
        rows.append([r + 1, f"{len(paths) / cold:.0f}", f"{len(paths) / warm:.0f}", f"{cold / warm:.1f}x"])
    speedup = sorted(w / c for w, c in zip(warm_rates, cold_rates, strict=True))[rounds // 2]
    out = [
        "## Audio features: cold vs cached",
        "",
        f"`python benchmarks/audio_features.py` — {len(paths)} clips of {source}, log-mel 40x63, "
        f"{rounds} rounds, each with a fresh cache; cold and cached measured back to back in one process.",
        "",
        table(["round", "cold clips/s", "cached clips/s", "cached / cold speed"], rows),
        "",
        f"Median speed-up from the cache: **{speedup:.1f}x**. "
        "The cache is keyed by file content (SHA-256) plus the feature settings, so an edited clip or a "
        "changed setting misses; augmentation reuses the cached fixed-length waveform.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(main())
