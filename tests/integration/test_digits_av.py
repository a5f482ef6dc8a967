"""The embedded `digits-av` scenario: real sklearn digits + espeak-ng spoken digits, one voice per site."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image
from sklearn.datasets import load_digits

from mmfed.data.manifest import load_manifest
from mmfed.data.scenarios import digits_av
from mmfed.data.scenarios.digits_av import DIGITS_AV_VOICES, MARKER_NAME, generate_digits_av
from mmfed.errors import ConfigError, DataError

N_IMAGES = 1797


@pytest.fixture(scope="module")
def generated(digits_av) -> tuple[Path, list[Path]]:
    """The session's default-scenario build (prepare_scenario -> generate_digits_av, seed 0)."""
    return digits_av.sites[0].parent, digits_av.sites


@pytest.fixture(scope="module")
def manifests(generated):
    return [load_manifest(site) for site in generated[1]]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _fast_synthesize(text, voice="en", rate=175, pitch=50, pitch_range=50):
    """Stand-in for espeak in tests of the generation mechanics: a tone, so they take seconds."""
    sr = 22050
    t = np.arange(int(0.3 * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * (100 + pitch + len(text)) * t)).astype(np.float32), sr


def test_six_sites_one_voice_each(generated):
    root, sites = generated
    assert len(sites) == 6
    assert [s.name for s in sites] == [f"site_{k}_{v.slug}" for k, v in enumerate(DIGITS_AV_VOICES[:6])]
    assert len({v.name for v in DIGITS_AV_VOICES[:6]}) == 6
    assert all(s.parent == root and s.is_dir() for s in sites)
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["seed"] == 0 and marker["sites"] == [s.name for s in sites]
    assert not list(root.parent.glob(".digits-av.tmp-*")), "temporary generation directory left behind"


def test_manifests_validate_with_images_audio_and_voice(generated, manifests):
    for site, voice, manifest in zip(generated[1], DIGITS_AV_VOICES, manifests, strict=False):
        assert manifest.labels == [str(d) for d in range(10)]
        assert manifest.extra_columns == ["voice"]
        assert manifest.skipped == []
        for sample in manifest.samples:
            assert sample.modalities == ("image", "audio")
            assert sample.extra["voice"] == voice.name
            assert sample.image.parent == site / "images" and sample.audio.parent == site / "audio"


def test_every_real_digit_image_used_exactly_once(manifests):
    digits = load_digits()
    ids = [s.id for m in manifests for s in m.samples]
    assert len(ids) == len(set(ids)) == N_IMAGES
    assert set(ids) == {f"d{i:04d}" for i in range(N_IMAGES)}
    for manifest in manifests:
        for sample in manifest.samples:
            index = int(sample.id[1:])
            assert sample.label == digits.target[index]
        for sample in manifest.samples[:20]:  # pixel content: the sklearn image, 0..16 scaled to 0..255
            pixels = np.asarray(Image.open(sample.image))
            expected = np.rint(digits.images[int(sample.id[1:])] * 255 / 16)
            assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
            np.testing.assert_array_equal(pixels, expected)


def test_sites_get_equal_shares_and_stratified_80_20_splits(manifests):
    sizes = [len(m.samples) for m in manifests]
    assert max(sizes) - min(sizes) <= 1
    for manifest in manifests:
        train, test = manifest.split("train"), manifest.split("test")
        assert len(train) + len(test) == len(manifest.samples)
        assert 0.77 <= len(train) / len(manifest.samples) <= 0.83
        assert {s.label for s in train} == set(range(10))
        assert {s.label for s in test} == set(range(10))
        for digit in range(10):  # stratified: each digit split ~80/20 too
            n_train = sum(s.label == digit for s in train)
            n_test = sum(s.label == digit for s in test)
            assert abs(n_test - 0.2 * (n_train + n_test)) <= 1


def test_audio_is_8khz_pcm16_speech_and_no_two_clips_identical(manifests):
    digests = set()
    for manifest in manifests:
        for sample in manifest.samples:
            info = soundfile.info(str(sample.audio))
            assert info.samplerate == 8000 and info.channels == 1 and info.subtype == "PCM_16"
            wave, _ = soundfile.read(str(sample.audio), dtype="float32")
            assert 0.2 <= wave.size / 8000 <= 1.2
            assert np.sqrt(np.mean(wave**2)) > 0.03
            digests.add(hashlib.sha256(wave.tobytes()).hexdigest())
    assert len(digests) == N_IMAGES


def _voice_features(path: Path) -> np.ndarray:
    """Average log power spectrum of the loud frames, level-normalised: the speaker's timbre and pitch."""
    wave, _ = soundfile.read(str(path), dtype="float32")
    frames = np.lib.stride_tricks.sliding_window_view(wave, 256)[::128] * np.hanning(256)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(axis=1)
    spectrum = np.log(power[energy > 0.1 * energy.max()].mean(axis=0) + 1e-10)
    return spectrum - spectrum.mean()


def test_sites_have_measurably_different_voices(manifests):
    # Nearest site-centroid on spectra, fitted on train clips, must tell the test clips' site apart far
    # above chance (1/6): each site is a distinct speaker, the non-IID audio a federation has to handle.
    train = [np.array([_voice_features(s.audio) for s in m.split("train")]) for m in manifests]
    centroids = np.array([x.mean(axis=0) for x in train])
    correct = total = 0
    for k, manifest in enumerate(manifests):
        test = np.array([_voice_features(s.audio) for s in manifest.split("test")])
        predicted = ((test[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
        correct += int((predicted == k).sum())
        total += len(predicted)
    assert correct / total > 0.5


def test_second_call_returns_existing_dirs_without_rewriting(generated):
    root, sites = generated
    before = {p: p.stat().st_mtime_ns for p in _files(root)}
    start = time.perf_counter()
    again = generate_digits_av(root, seed=0)
    assert time.perf_counter() - start < 0.5
    assert again == sites
    assert {p: p.stat().st_mtime_ns for p in _files(root)} == before


@pytest.mark.slow
def test_same_seed_regenerates_identical_files(generated, tmp_path):
    root, _ = generated
    other = tmp_path / "digits-av"
    generate_digits_av(other, seed=0)
    # what the generator writes (the session's cache root may also hold the task.toml that `mmfed data
    # prepare` writes beside the sites, when an earlier test prepared the scenario)
    written = [p for p in _files(root) if p.relative_to(root).as_posix() != "task.toml"]
    assert {p.relative_to(root) for p in written} == {p.relative_to(other) for p in _files(other)}
    for path in written:
        copy = other / path.relative_to(root)
        assert copy.read_bytes() == path.read_bytes(), f"{path.relative_to(root)} differs between runs"


@pytest.mark.parametrize("num_sites", [0, len(DIGITS_AV_VOICES) + 1])
def test_site_count_outside_the_voice_table_is_refused(tmp_path, num_sites):
    with pytest.raises(ConfigError, match="num_sites"):
        generate_digits_av(tmp_path / "d", num_sites=num_sites)


# Generation mechanics, with a fast stand-in for espeak.


def test_interrupted_generation_leaves_nothing_to_use(tmp_path, monkeypatch):
    calls = 0

    def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 500:
            raise RuntimeError("simulated crash")
        return _fast_synthesize(*args, **kwargs)

    monkeypatch.setattr(digits_av, "synthesize", failing)
    root = tmp_path / "digits-av"
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_digits_av(root)
    assert not root.exists()
    assert not list(tmp_path.glob(".digits-av.tmp-*"))


def test_stale_half_written_generation_is_ignored_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(digits_av, "synthesize", _fast_synthesize)
    stale = tmp_path / ".digits-av.tmp-crashed"  # what a killed process leaves behind
    (stale / "site_0_en-us").mkdir(parents=True)
    (stale / "site_0_en-us" / "manifest.csv").write_text("id,label,split,image\n")
    sites = generate_digits_av(tmp_path / "digits-av", num_sites=2)
    assert not stale.exists()
    assert sum(len(load_manifest(s).samples) for s in sites) == N_IMAGES


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_other_seed_replaces_the_generation(tmp_path, monkeypatch):
    monkeypatch.setattr(digits_av, "synthesize", _fast_synthesize)
    root = tmp_path / "digits-av"
    first = {s.id for s in load_manifest(generate_digits_av(root, seed=0, num_sites=3)[0]).samples}
    sites = generate_digits_av(root, seed=1, num_sites=2)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [s.name for s in sites]
    assert json.loads((root / MARKER_NAME).read_text())["seed"] == 1
    assert {s.id for s in load_manifest(sites[0]).samples} != first
    assert not list(tmp_path.glob(".digits-av.old-*"))


def test_foreign_directory_is_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(digits_av, "synthesize", _fast_synthesize)
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a digits-av generation"):
        generate_digits_av(root, num_sites=2)
    assert (root / "notes.txt").read_text() == "keep me"


def test_concurrent_callers_generate_once(tmp_path, monkeypatch):
    calls = 0
    lock = threading.Lock()

    def counting(*args, **kwargs):
        nonlocal calls
        with lock:
            calls += 1
        return _fast_synthesize(*args, **kwargs)

    monkeypatch.setattr(digits_av, "synthesize", counting)
    root = tmp_path / "digits-av"
    results: list[list[Path]] = []
    threads = [
        threading.Thread(target=lambda: results.append(generate_digits_av(root, num_sites=2)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert calls == N_IMAGES
