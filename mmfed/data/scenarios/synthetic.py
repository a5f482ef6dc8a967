"""`synthetic`: generated multimodal data of any size and site count, for scale tests.

Each class has a signature in every modality (a bright blob at a class position, a tone at a class
frequency, class words in a sentence, a blob moving in a class direction), buried in noise, so models
can learn it but not trivially. Sites are written lazily, one at a time: a 1,000-site federation only
writes the sites that are actually used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from mmfed.config import MODALITIES, parse_modalities
from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios.build import build_once

GENERATOR_VERSION = "synthetic/1"
SAMPLE_RATE = 8000
_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
_FILLER = "the a patient site sample reading signal value shows with and of normal report".split()


def _image(label: int, num_classes: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    angle = 2 * np.pi * label / num_classes
    cy, cx = size / 2 + size / 4 * np.sin(angle), size / 2 + size / 4 * np.cos(angle)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
    img = 0.7 * blob + 0.35 * rng.random((size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _audio(label: int, rng: np.random.Generator, seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    freq = 250.0 * 2 ** (label / 4)  # classes a third of an octave apart
    tone = 0.4 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return (tone + 0.15 * rng.standard_normal(t.size)).astype(np.float32)


def _text(label: int, rng: np.random.Generator) -> str:
    words = list(rng.choice(_FILLER, size=6)) + [_WORDS[label % len(_WORDS)]] * 2
    rng.shuffle(words)
    return " ".join(words)


def _video(
    label: int, num_classes: int, rng: np.random.Generator, frames: int = 8, size: int = 32
) -> np.ndarray:
    angle = 2 * np.pi * label / num_classes
    out = np.zeros((frames, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for f in range(frames):
        r = size / 3 * (f / max(frames - 1, 1) - 0.5)
        cy, cx = size / 2 + r * np.sin(angle), size / 2 + r * np.cos(angle)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
        frame = np.clip(0.8 * blob + 0.2 * rng.random((size, size)), 0, 1)
        out[f] = (frame[..., None] * 255).astype(np.uint8)
    return out


def _write_video(path: Path, frames: np.ndarray) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_site(
    site: Path, index: int, samples: int, num_classes: int, modalities: tuple[str, ...], seed: int
) -> Path:
    rng = np.random.default_rng([seed, index])
    for m in ("image", "audio", "video"):
        if m in modalities:
            (site / m).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(samples):
        label = int(rng.integers(num_classes))
        sid = f"s{index}_{i}"
        row = {"id": sid, "label": str(label), "split": "test" if i % 5 == 4 else "train"}
        if "image" in modalities:
            Image.fromarray(_image(label, num_classes, rng), mode="L").save(site / "image" / f"{sid}.png")
            row["image"] = f"image/{sid}.png"
        if "audio" in modalities:
            soundfile.write(site / "audio" / f"{sid}.wav", _audio(label, rng), SAMPLE_RATE, subtype="PCM_16")
            row["audio"] = f"audio/{sid}.wav"
        if "text" in modalities:
            row["text"] = _text(label, rng)
        if "video" in modalities:
            _write_video(site / "video" / f"{sid}.mp4", _video(label, num_classes, rng))
            row["video"] = f"video/{sid}.mp4"
        rows.append(row)
    write_manifest(site, rows, labels=[str(c) for c in range(num_classes)])
    return site


def synthetic_site_path(
    root: Path, index: int, samples: int, num_classes: int, modalities: tuple[str, ...], seed: int
) -> Path:
    """Where site `index` lives (written or not)."""
    tag = "".join(m[0] for m in MODALITIES if m in modalities)
    return Path(root) / f"n{samples}-c{num_classes}-{tag}-s{seed}" / f"site_{index:05d}"


def synthetic_site(
    root: Path,
    index: int,
    samples: int = 50,
    num_classes: int = 10,
    modalities: tuple[str, ...] | str = ("image", "audio", "text"),
    seed: int = 0,
) -> Path:
    """Site `index` of a synthetic federation, written under `root` on first use."""
    mods = parse_modalities(modalities)
    settings = {
        "scenario": "synthetic",
        "generator": GENERATOR_VERSION,
        "site": index,
        "samples": samples,
        "classes": num_classes,
        "modalities": list(mods),
        "seed": seed,
    }
    site_root = synthetic_site_path(root, index, samples, num_classes, mods, seed)
    return build_once(
        site_root, settings, lambda tmp: [_write_site(tmp, index, samples, num_classes, mods, seed)]
    )[0]


def build_sites(request):
    """mmfed.data.scenarios.BUILTINS' entry point. Sites are written on first use: a 1,000-site run on one
    machine should not make every process write every site."""
    root = request.cache / "scenarios" / "synthetic"
    args = (request.samples_per_site, 10, request.modalities, request.seed)

    def make(index: int) -> Path:
        return synthetic_site(root, index, *args)

    return [synthetic_site_path(root, i, *args) for i in range(request.num_sites)], make
