"""`fsdd-mnist-public`: public pretraining data for `fsdd-mnist`, disjoint from every fsdd-mnist site.

fsdd-mnist gives its 6 speaker sites 3,000 of the 15,000 MNIST images in the data folder (2,700 from the
5k training subset, 300 from the official test set, chosen by the run's seed). The other 12,000 are held
by no site; this scenario pairs PER_DIGIT of them per digit with a spoken digit from the embedded,
synthetic espeak-ng speech of digits-av and digits-public (12 voices, no FSDD speaker in it). Nothing an
FSDD speaker recorded is in it, and no image a site holds (tested by index and by pixels).

It is built for one fsdd-mnist seed: a run with another seed deals other images to its sites, so its
public set is another one (the recipe's cache key holds the seed). One folder `public/`, TEST_FRACTION of
each digit in `test` (the split the pretraining's hyper-parameters were chosen on; both MNIST splits are
mixed in it, as the sites' training and test images come from both too):

    root/.fsdd-mnist-public.json        marker: generator version, seed, data folder, size
    root/public/manifest.csv            id,label,split,image,audio,...,mnist_split,mnist_index,voice_source
    root/public/images/<id>.png, audio/<source>-<clip>.wav
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from mmfed.data.manifest import MANIFEST_NAME, write_manifest
from mmfed.data.scenarios import BUILTINS
from mmfed.data.scenarios.build import build_once

SCENARIO = "fsdd-mnist-public"
GENERATOR_VERSION = 1  # bump when the output changes: existing generations and pretrained models rebuild
MARKER_NAME = ".fsdd-mnist-public.json"
PER_DIGIT = 600  # 6,000 pairs of the 12,000 free images: enough for the encoders (public test split)
TEST_FRACTION = 0.2
LABELS = list(BUILTINS[SCENARIO].labels)


def free_images(mnist, data_dir: Path, seed: int) -> dict[str, np.ndarray]:
    """{'train'|'test': MNIST indices of that split no fsdd-mnist site of this seed holds}."""
    from mmfed.data.scenarios.fsdd_mnist import list_recordings, pairing

    used = {(split, index) for *_, split, index in pairing(mnist, list_recordings(data_dir), seed, data_dir)}
    return {
        split: np.array([i for i in range(len(labels)) if (split, i) not in used], dtype=np.int64)
        for split, (_, labels) in mnist.items()
    }


def _speech(cache: Path, seed: int) -> dict[int, list[tuple[str, Path]]]:
    """digit -> [(source, wav)] from the embedded synthetic scenarios (built once into the cache)."""
    from mmfed.data.scenarios.digits_av import generate_digits_av
    from mmfed.data.scenarios.digits_public import generate_digits_public

    clips: dict[int, list[tuple[str, Path]]] = {d: [] for d in range(10)}
    scenarios = (
        ("digits-av", generate_digits_av(cache / "scenarios" / f"digits-av-s{seed}", seed=seed)),
        ("digits-public", generate_digits_public(cache / "scenarios" / f"digits-public-s{seed}", seed=seed)),
    )
    for source, sites in scenarios:
        for site in sites:
            with (site / MANIFEST_NAME).open(newline="", encoding="utf-8") as fh:  # written by our generator
                rows = list(csv.DictReader(fh))
            for row in rows:
                clips[int(row["label"])].append((f"{source}-{site.name}", site / row["audio"]))
    return clips


def _write(out: Path, data_dir: Path, cache: Path, seed: int, per_digit: int) -> list[Path]:
    from PIL import Image

    from mmfed.data.scenarios.fsdd_mnist import load_mnist

    mnist = load_mnist(data_dir)
    free = free_images(mnist, data_dir, seed)
    speech = _speech(cache, seed)
    rng = np.random.default_rng([seed, 7])
    folder = out / "public"
    (folder / "images").mkdir(parents=True)
    (folder / "audio").mkdir()
    rows = []
    for digit in range(10):
        candidates = [
            (split, int(i)) for split in ("train", "test") for i in free[split] if mnist[split][1][i] == digit
        ]
        chosen = rng.permutation(len(candidates))[:per_digit]
        clips = speech[digit]
        voices = rng.integers(0, len(clips), len(chosen))
        n_test = round(TEST_FRACTION * len(chosen))
        for k, (pick, clip) in enumerate(zip(chosen.tolist(), voices.tolist(), strict=True)):
            split, index = candidates[pick]
            sample_id = f"m{digit}-{k:04d}"
            Image.fromarray(mnist[split][0][index], mode="L").save(folder / "images" / f"{sample_id}.png")
            source, wav = clips[clip]
            audio = f"audio/{source}-{wav.name}"
            if not (folder / audio).exists():
                shutil.copyfile(wav, folder / audio)
            rows.append({
                "id": sample_id,
                "label": str(digit),
                "split": "test" if k < n_test else "train",
                "image": f"images/{sample_id}.png",
                "audio": audio,
                "mnist_split": split,
                "mnist_index": str(index),
                "voice_source": source,
            })  # fmt: skip
    write_manifest(folder, rows, LABELS)
    return [folder]


def generate_fsdd_mnist_public(
    root: Path, data_dir: Path, cache: Path, seed: int = 0, per_digit: int | None = None
) -> list[Path]:
    """Build the public set for fsdd-mnist sites of `seed` under `root` (once); its one folder."""
    from mmfed.data.scenarios.fsdd_mnist import list_recordings

    data_dir = Path(data_dir)
    per_digit = PER_DIGIT if per_digit is None else per_digit
    list_recordings(data_dir)  # fail early, before building anything, if the data dir is wrong
    settings = {
        "scenario": SCENARIO,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "data_dir": str(data_dir),
        "per_digit": per_digit,
    }
    return build_once(
        Path(root), settings, lambda tmp: _write(tmp, data_dir, Path(cache), seed, per_digit), MARKER_NAME
    )


def build_sites(request) -> tuple[list[Path], None]:
    """mmfed.data.scenarios.BUILTINS' entry point."""
    root = request.root(SCENARIO)
    return generate_fsdd_mnist_public(root, request.data_dir, request.cache, seed=request.seed), None
