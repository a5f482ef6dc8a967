"""`fsdd-mnist-public`, the public data fsdd-mnist's DP recipe pretrains on: no image in it is one an
fsdd-mnist site of the same seed holds (by MNIST index and by pixels), no FSDD recording is in it, and the
pretrained recipe that trains on it needs the run's data folder and is keyed by the run's seed."""

import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from mmfed.data.manifest import load_manifest
from mmfed.data.scenarios import digits_av as digits_av_module
from mmfed.data.scenarios import fsdd_mnist_public, prepare_scenario
from mmfed.data.scenarios.fsdd_mnist_public import MARKER_NAME, generate_fsdd_mnist_public
from mmfed.errors import ConfigError
from mmfed.federation.config import FederationConfig
from mmfed.federation.run_task import run_task
from mmfed.train.pretrained import cache_root, pretrained_model

PER_DIGIT = 30


def _fast_synthesize(text, voice="en", rate=175, pitch=50, pitch_range=50):
    """A tone instead of espeak: the public speech's voices are tested in test_digits_public."""
    sr = 22050
    t = np.arange(int(0.3 * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * (100 + pitch + len(text)) * t)).astype(np.float32), sr


def _rows(folder):
    with (folder / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _pixels(path) -> str:
    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def public(shared_data, tmp_path_factory):
    """The public set for seed 0, built with the fast tone speech into a cache of its own."""
    cache = tmp_path_factory.mktemp("public-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(digits_av_module, "synthesize", _fast_synthesize)
        folders = generate_fsdd_mnist_public(
            cache / "fsdd-mnist-public", shared_data, cache, seed=0, per_digit=PER_DIGIT
        )
    return cache, folders


def test_no_public_image_is_a_site_image_by_index_or_by_pixels(public, fsdd_sites):
    _, [folder] = public
    rows = _rows(folder)
    site_rows = [r for site in fsdd_sites.sites for r in _rows(site)]
    held = {(r["mnist_split"], r["mnist_index"]) for r in site_rows}
    assert len(held) == 3000  # every site image, train and test
    assert not {(r["mnist_split"], r["mnist_index"]) for r in rows} & held
    site_pixels = {_pixels(site / r["image"]) for site in fsdd_sites.sites for r in _rows(site)}
    assert not {_pixels(folder / r["image"]) for r in rows} & site_pixels
    # and nothing FSDD recorded: every clip is synthetic speech from the embedded scenarios
    assert all(r["voice_source"].startswith(("digits-av-", "digits-public-")) for r in rows)
    fsdd_names = {r["audio"].rsplit("/", 1)[1] for r in site_rows}
    assert not {r["audio"].rsplit("/", 1)[1] for r in rows} & fsdd_names


def test_it_is_balanced_split_readable_and_built_once(public, shared_data):
    cache, [folder] = public
    rows = _rows(folder)
    assert len(rows) == 10 * PER_DIGIT
    for digit in range(10):
        mine = [r for r in rows if r["label"] == str(digit)]
        assert len(mine) == PER_DIGIT and sum(r["split"] == "test" for r in mine) == round(0.2 * PER_DIGIT)
    # the image's label is MNIST's own (no mislabelled public record)
    from mmfed.data.scenarios.fsdd_mnist import load_mnist

    mnist = load_mnist(shared_data)
    for r in rows[:: PER_DIGIT // 3]:
        image = np.asarray(Image.open(folder / r["image"]))
        split, index = r["mnist_split"], int(r["mnist_index"])
        assert (image == mnist[split][0][index]).all() and mnist[split][1][index] == int(r["label"])
    manifest = load_manifest(folder)
    assert len(manifest.samples) == len(rows)  # the product's own reader accepts it
    marker = json.loads((cache / "fsdd-mnist-public" / MARKER_NAME).read_text())
    stamp = (folder / "manifest.csv").stat().st_mtime_ns
    again = generate_fsdd_mnist_public(
        cache / "fsdd-mnist-public", shared_data, cache, seed=0, per_digit=PER_DIGIT
    )
    assert again == [folder] and (folder / "manifest.csv").stat().st_mtime_ns == stamp
    assert marker["seed"] == 0 and marker["per_digit"] == PER_DIGIT


def test_another_seed_takes_other_free_images(shared_data):
    from mmfed.data.scenarios.fsdd_mnist import list_recordings, load_mnist, pairing

    mnist = load_mnist(shared_data)
    free = {seed: fsdd_mnist_public.free_images(mnist, shared_data, seed) for seed in (0, 1)}
    for seed in (0, 1):
        held = {(s, i) for *_, s, i in pairing(mnist, list_recordings(shared_data), seed, shared_data)}
        assert sum(len(v) for v in free[seed].values()) == 15000 - 3000
        assert not {(s, int(i)) for s, v in free[seed].items() for i in v} & held
    assert set(free[0]["train"].tolist()) != set(free[1]["train"].tolist())


def test_the_recipe_needs_the_data_folder_and_is_keyed_by_the_seed(shared_data, tmp_path):
    task = run_task(FederationConfig(scenario="fsdd-mnist", modalities="image,audio"))
    with pytest.raises(ConfigError) as err:
        pretrained_model("pretrained:fsdd-mnist-public", task, tmp_path)
    assert "data-dir" in str(err.value) and "fsdd/ and mnist/" in str(err.value)
    roots = {cache_root("fsdd-mnist-public", task, tmp_path, shared_data, seed)[0] for seed in (0, 1)}
    assert len(roots) == 2
    _, settings = cache_root("fsdd-mnist-public", task, tmp_path, shared_data, 0)
    assert settings["sites_seed"] == 0 and settings["data_dir"] == str(shared_data.resolve())


def test_prepare_scenario_builds_it_from_the_data_folder(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr(digits_av_module, "synthesize", _fast_synthesize)
    monkeypatch.setattr(fsdd_mnist_public, "PER_DIGIT", 5)
    with pytest.raises(ConfigError):
        prepare_scenario("fsdd-mnist-public", cache_dir=tmp_path)  # no data folder
    scenario = prepare_scenario("fsdd-mnist-public", data_dir=shared_data, cache_dir=tmp_path)
    assert [p.name for p in scenario.sites] == ["public"] and len(_rows(scenario.sites[0])) == 50
