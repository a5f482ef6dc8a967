"""`digits-av`: the embedded default scenario, built offline from what the installed packages ship.

Images are the 1,797 real handwritten 8x8 digits of scikit-learn (`load_digits`). Each is paired with the
spoken name of its digit, synthesised by espeak-ng (mmfed.data.tts). Every site has its own voice
(accent + speaker variant), so the sites differ the way real sites do (non-IID audio), and every clip
gets its own seeded jitter of rate, pitch, intonation, gain, leading/trailing silence and noise, so no
two clips are identical.

Each image is used exactly once: the images are shuffled (seeded) and dealt to the sites; within a site a
stratified split puts ~20% of each digit in `test`. Layout under `root`:

    root/.digits-av.json                   marker: generator version, seed, sites, voices
    root/site_<k>_<voice-slug>/manifest.csv  id,label,split,image,audio,text,video,voice
    root/site_<k>_<voice-slug>/labels.txt    0..9
    root/site_<k>_<voice-slug>/images/<id>.png   the original 8x8 grey image (0..16 -> 0..255)
    root/site_<k>_<voice-slug>/audio/<id>.wav    8 kHz mono, 16-bit PCM
    <parent>/.<root name>.lock               serialises concurrent generations (left in place)

<id> is `d` + the image's index in load_digits() (d0000..d1796); <k> counts from 0, like Flower's
partition-id.

Generated once, atomically and under a lock (mmfed.data.scenarios.build): a crash leaves nothing that
is used, concurrent callers (the ClientApps of a simulation) generate once, later calls return at once.
"""

from __future__ import annotations

import functools
import io
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios import BUILTINS
from mmfed.data.scenarios.build import build_once
from mmfed.data.tts import synthesize
from mmfed.errors import ConfigError

SCENARIO = "digits-av"
GENERATOR_VERSION = 1  # bump when the output changes, so existing generations are rebuilt
MARKER_NAME = ".digits-av.json"
AUDIO_SAMPLE_RATE = 8000
TEST_FRACTION = 0.2
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LABELS = list(BUILTINS["digits-av"].labels)  # the task's classes, declared once


@dataclass(frozen=True)
class Voice:
    """One site's speaker: an espeak-ng voice (accent + variant) and its base rate and pitch."""

    name: str  # espeak-ng voice name with variant, as synthesize() takes it
    rate: int  # words per minute
    pitch: int  # 0..100, 50 = the variant's own

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


# Accents and variants chosen to be audibly distinct: alternating male/female variants (median F0 about
# 85-95 Hz vs 160-190 Hz at pitch 50), different accents, base pitch and rate spread per site.
DIGITS_AV_VOICES: tuple[Voice, ...] = (
    Voice("en-us", rate=170, pitch=42),
    Voice("en-gb-scotland+f3", rate=160, pitch=55),
    Voice("en-029+m7", rate=185, pitch=50),
    Voice("en-gb-x-rp+f4", rate=175, pitch=45),
    Voice("en-us-nyc+m1", rate=195, pitch=60),
    Voice("en-gb-x-gbclan+f2", rate=165, pitch=62),
    Voice("en-gb-x-gbcwmd+m3", rate=150, pitch=48),
    Voice("en+klatt", rate=180, pitch=55),
)


def site_name(index: int, voice: Voice) -> str:
    return f"site_{index}_{voice.slug}"


def generate_digits_av(root: Path, seed: int = 0, num_sites: int = 6) -> list[Path]:
    """Build the scenario under `root` (once) and return its site directories in order.

    A later call with the same seed and num_sites returns the existing directories without touching
    them. A generation made with another seed, site count or generator version is replaced.
    """
    root = Path(root)
    most = len(DIGITS_AV_VOICES)
    if not 1 <= num_sites <= most:
        raise ConfigError("num_sites", f"digits-av has {most} voices, so 1..{most} sites; got {num_sites}")
    return build_once(
        root, _marker(seed, num_sites), lambda tmp: _write_sites(tmp, seed, num_sites), MARKER_NAME
    )


def _marker(seed: int, num_sites: int) -> dict:
    voices = DIGITS_AV_VOICES[:num_sites]
    return {
        "scenario": SCENARIO,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_sites": num_sites,
        "voices": [asdict(v) for v in voices],
        "audio_sample_rate": AUDIO_SAMPLE_RATE,
    }


def _write_sites(out: Path, seed: int, num_sites: int) -> list[Path]:
    import soundfile
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    targets = digits.target.astype(int)
    order = np.random.default_rng([seed, 0]).permutation(len(targets))

    sites = []
    for k, indices in enumerate(np.array_split(order, num_sites)):  # deal: sizes differ by at most one
        voice = DIGITS_AV_VOICES[k]
        site = out / site_name(k, voice)
        (site / "images").mkdir(parents=True)
        (site / "audio").mkdir()
        test_ids = _stratified_test(indices, targets)
        rows = []
        for index in sorted(int(i) for i in indices):
            sample_id = f"d{index:04d}"
            digit = int(targets[index])
            Image.fromarray(images[index]).save(site / "images" / f"{sample_id}.png")
            # Keyed by the image index, so a clip does not depend on generation order.
            wave = _utterance(WORDS[digit], voice, np.random.default_rng([seed, 1, index]))
            # Encode in memory: soundfile.write() to a path fsyncs on close, 4 ms a file here (7 s in all).
            buffer = io.BytesIO()
            soundfile.write(buffer, wave, AUDIO_SAMPLE_RATE, subtype="PCM_16", format="WAV")
            (site / "audio" / f"{sample_id}.wav").write_bytes(buffer.getvalue())
            rows.append({
                "id": sample_id,
                "label": str(digit),
                "split": "test" if index in test_ids else "train",
                "image": f"images/{sample_id}.png",
                "audio": f"audio/{sample_id}.wav",
                "voice": voice.name,
            })  # fmt: skip
        write_manifest(site, rows, LABELS)
        sites.append(site)
    return sites


def _stratified_test(indices: np.ndarray, targets: np.ndarray) -> set[int]:
    """~TEST_FRACTION of each digit (the first ones in the seeded order), at least one left for train."""
    test: set[int] = set()
    for digit in range(10):
        members = [int(i) for i in indices if targets[i] == digit]
        n_test = min(int(round(TEST_FRACTION * len(members))), max(len(members) - 1, 0))
        test.update(members[:n_test])
    return test


def _utterance(word: str, voice: Voice, rng: np.random.Generator) -> np.ndarray:
    """One spoken word at 8 kHz with its own rate/pitch/intonation jitter, timing, gain and noise."""
    from scipy.signal import resample_poly

    rate = int(round(voice.rate * rng.uniform(0.85, 1.15)))
    pitch = int(np.clip(voice.pitch + rng.integers(-8, 9), 0, 100))
    pitch_range = int(rng.integers(30, 80))
    wave, sr = synthesize(word, voice=voice.name, rate=rate, pitch=pitch, pitch_range=pitch_range)
    # espeak pads the word with silence; cut it so the padding below is what varies.
    loud = np.flatnonzero(np.abs(wave) > 0.02 * np.abs(wave).max())
    wave = wave[loud[0] : loud[-1] + 1]
    up, down = _ratio(sr, AUDIO_SAMPLE_RATE)
    wave = resample_poly(wave, up, down, window=_lowpass(up, down)).astype(np.float64)
    lead, tail = (int(rng.uniform(0.02, 0.15) * AUDIO_SAMPLE_RATE) for _ in range(2))
    voiced_rms = float(np.sqrt(np.mean(wave**2)))
    wave = np.concatenate([np.zeros(lead), wave, np.zeros(tail)])
    noise_rms = voiced_rms / 10 ** (rng.uniform(18.0, 32.0) / 20)  # SNR 18..32 dB
    wave = wave + rng.normal(0.0, noise_rms, wave.size)
    wave *= rng.uniform(0.35, 0.9) / np.abs(wave).max()
    return wave.astype(np.float32)


def _ratio(src: int, dst: int) -> tuple[int, int]:
    g = math.gcd(src, dst)
    return dst // g, src // g


@functools.lru_cache(maxsize=4)
def _lowpass(up: int, down: int) -> np.ndarray:
    """resample_poly's own anti-aliasing filter, designed once instead of once per clip (~1 ms each)."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def build_sites(request) -> tuple[list[Path], None]:
    """mmfed.data.scenarios.BUILTINS' entry point."""
    return generate_digits_av(request.root(SCENARIO), seed=request.seed, num_sites=request.num_sites), None
