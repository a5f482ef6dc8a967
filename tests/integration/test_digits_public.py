"""`digits-public`, the public data `make run` pretrains on: no record of it is a digits-av site's record
(no image equals a site image, no voice is a site voice), and it is built once like every scenario."""

import json

import numpy as np
import pytest
from PIL import Image

from mmfed.data.manifest import load_manifest
from mmfed.data.scenarios import digits_av as digits_av_module
from mmfed.data.scenarios import digits_public, prepare_scenario
from mmfed.data.scenarios.digits_av import DIGITS_AV_VOICES
from mmfed.data.scenarios.digits_public import (
    MARKER_NAME,
    PER_VOICE,
    PUBLIC_VOICES,
    generate_digits_public,
    render_digit,
)


def _fast_synthesize(text, voice="en", rate=175, pitch=50, pitch_range=50):
    """A tone instead of espeak: the audio of these tests is not what they check (the voices are)."""
    sr = 22050
    t = np.arange(int(0.3 * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * (100 + pitch + len(text)) * t)).astype(np.float32), sr


def _pixels(site, sample) -> bytes:
    return np.asarray(Image.open(site / sample.image)).tobytes()


def test_no_public_voice_is_a_site_voice_nor_uses_a_site_voices_variant():
    public = {v.name for v in PUBLIC_VOICES}
    every_site = {v.name for v in DIGITS_AV_VOICES}  # all 8 digits-av can use, not only the default 6
    assert len(public) == len(PUBLIC_VOICES) and not public & every_site
    assert not {n.partition("+")[2] for n in public} & {n.partition("+")[2] for n in every_site}
    assert digits_public.public_voices_disjoint()


def test_a_rendered_digit_is_an_optdigits_style_8x8_image():
    rng = np.random.default_rng(0)
    for font in digits_public.FONTS:
        image = render_digit(7, font, rng)
        assert image.shape == (8, 8) and image.dtype.kind == "i"
        assert 0 <= image.min() and image.max() <= 16 and image.max() >= 8  # 4x4 blocks of on-pixels
        assert image[0].any() and image[-1].any()  # the digit fills the height, as in optdigits
    again = render_digit(7, "DejaVuSans", np.random.default_rng(5))
    assert (again == render_digit(7, "DejaVuSans", np.random.default_rng(5))).all()  # seeded


def test_generation_is_balanced_split_and_built_once(tmp_path, monkeypatch):
    monkeypatch.setattr(digits_av_module, "synthesize", _fast_synthesize)
    root = tmp_path / "digits-public"
    folders = generate_digits_public(root, seed=0, per_voice=20)
    assert [f.name for f in folders] == [digits_public.voice_dir(k, v) for k, v in enumerate(PUBLIC_VOICES)]
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["scenario"] == "digits-public" and marker["per_voice"] == 20
    for folder, voice in zip(folders, PUBLIC_VOICES, strict=True):
        manifest = load_manifest(folder)
        assert len(manifest.samples) == 20
        assert {s.extra["voice"] for s in manifest.samples} == {voice.name}
        assert [sum(s.label == d for s in manifest.samples) for d in range(10)] == [2] * 10
        assert [sum(s.label == d for s in manifest.split("test")) for d in range(10)] == [1] * 10
    stamp = (folders[0] / "manifest.csv").stat().st_mtime_ns
    assert generate_digits_public(root, seed=0, per_voice=20) == folders  # built once
    assert (folders[0] / "manifest.csv").stat().st_mtime_ns == stamp
    other = generate_digits_public(tmp_path / "b", seed=0, per_voice=20)
    first = load_manifest(folders[3]).samples
    assert [_pixels(folders[3], s) for s in first] == [
        _pixels(other[3], s) for s in load_manifest(other[3]).samples
    ]


@pytest.mark.slow  # renders the 1,800 images of the real public set (~20 s)
def test_no_public_image_equals_any_site_image_and_no_public_voice_speaks_at_a_site(
    digits_av, tmp_path, monkeypatch
):
    """The public set `make run` pretrains on (PER_VOICE per voice, seed 0), against every digits-av site
    and every one of scikit-learn's 1,797 digits (digits-av deals them all to its sites)."""
    from sklearn.datasets import load_digits

    monkeypatch.setattr(digits_av_module, "synthesize", _fast_synthesize)  # the images do not depend on it
    public = generate_digits_public(tmp_path / "digits-public", seed=0)
    public_samples = [(f, s) for f in public for s in load_manifest(f).samples]
    assert len(public_samples) == PER_VOICE * len(PUBLIC_VOICES)
    site_samples = [(site, s) for site in digits_av.sites for s in load_manifest(site).samples]
    assert len(site_samples) == 1797
    sklearn = np.rint(load_digits().images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    site_pixels = {_pixels(site, s) for site, s in site_samples} | {image.tobytes() for image in sklearn}
    public_pixels = [_pixels(f, s) for f, s in public_samples]
    assert not set(public_pixels) & site_pixels
    # not even close: every public image differs from every site image in many pixels
    ours = np.array([np.frombuffer(p, np.uint8) for p in public_pixels], dtype=np.int16)
    nearest = min(np.abs(ours - theirs.reshape(-1).astype(np.int16)).sum(axis=1).min() for theirs in sklearn)
    assert nearest > 255
    site_voices = {s.extra["voice"] for _, s in site_samples}
    public_voices = {s.extra["voice"] for _, s in public_samples}
    assert site_voices == {v.name for v in DIGITS_AV_VOICES[:6]} and not public_voices & site_voices


def test_it_is_a_built_in_scenario_with_one_site_per_public_voice(tmp_path, monkeypatch):
    monkeypatch.setattr(digits_av_module, "synthesize", _fast_synthesize)
    monkeypatch.setattr(digits_public, "PER_VOICE", 20)
    scenario = prepare_scenario("digits-public", cache_dir=tmp_path)
    assert scenario.modalities == ("image", "audio") and scenario.labels == [str(d) for d in range(10)]
    assert len(scenario.sites) == len(PUBLIC_VOICES)
    assert scenario.spec == prepare_scenario("digits-av", build=False).spec  # tensors line up
