import shutil

import numpy as np
import pytest
import soundfile

import mmfed.data.audio as audio_mod
from mmfed.config import AudioSpec
from mmfed.data.audio import AudioProcessor, features, fit_length, load_waveform
from mmfed.errors import ConfigError, DataError


@pytest.fixture
def wav(shared_data, tmp_path):
    path = tmp_path / "7_jackson_12.wav"
    shutil.copy(shared_data / "fsdd" / "recordings" / "7_jackson_12.wav", path)
    return path


def test_load_resamples_fsdd_wav(wav):
    y8 = load_waveform(wav, 8000)
    y16 = load_waveform(wav, 16000)
    assert y8.dtype == np.float32 and 0.1 < y8.size / 8000 < 2.5
    assert abs(y16.size - 2 * y8.size) <= 2
    assert np.abs(y8).max() > 0.05


def test_fit_length_pads_and_crops_to_exact_length(wav):
    spec = AudioSpec(duration_s=1.0)
    y = load_waveform(wav, spec.sample_rate)
    assert fit_length(y, spec).shape == (8000,)
    long = np.concatenate([y] * 6)
    assert fit_length(long, spec).shape == (8000,)
    # silence around the clip is trimmed, so padding with silence barely changes the centred result
    padded = np.concatenate([np.zeros(4000, np.float32), y, np.zeros(9000, np.float32)])
    a = features(fit_length(y, spec), spec)
    b = features(fit_length(padded, spec), spec)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("feature, rows", [("logmel", 40), ("mfcc", 20)])
def test_features_shape_and_per_utterance_normalisation(wav, feature, rows):
    spec = AudioSpec(feature=feature)
    f = features(fit_length(load_waveform(wav, spec.sample_rate), spec), spec)
    assert f.shape == (1, rows, spec.frames) and f.dtype == np.float32
    assert abs(float(f.mean())) < 1e-3 and abs(float(f.std()) - 1) < 1e-2


def test_cache_skips_decoding_on_second_call_and_misses_on_edit(wav, tmp_path, monkeypatch):
    spec = AudioSpec()
    first = AudioProcessor(spec, tmp_path / "cache")(wav)
    monkeypatch.setattr(
        audio_mod, "load_waveform", lambda *a: (_ for _ in ()).throw(AssertionError("decoded"))
    )
    again = AudioProcessor(spec, tmp_path / "cache")(wav)  # a new process would see the same disk cache
    np.testing.assert_array_equal(first, again)
    # another feature setting is another cache entry (and needs decoding): no stale features
    with pytest.raises(AssertionError, match="decoded"):
        AudioProcessor(AudioSpec(feature="mfcc"), tmp_path / "cache")(wav)
    # an edited file is a different content hash
    y, sr = soundfile.read(wav)
    soundfile.write(wav, y[::-1], sr)
    with pytest.raises(AssertionError, match="decoded"):
        AudioProcessor(spec, tmp_path / "cache")(wav)


def test_augmentation_is_random_but_seeded_and_keeps_shape(wav, tmp_path):
    proc = AudioProcessor(AudioSpec(), tmp_path / "cache")
    plain = proc(wav)
    a = proc(wav, rng=np.random.default_rng(1))
    b = proc(wav, rng=np.random.default_rng(1))
    c = proc(wav, rng=np.random.default_rng(2))
    assert a.shape == plain.shape
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, plain)


def test_pitch_shift_augmentation_runs(wav):
    proc = AudioProcessor(
        AudioSpec(), None, audio_mod.AudioAugment(pitch_prob=1.0, noise_prob=0, speed_prob=0)
    )
    out = proc(wav, rng=np.random.default_rng(0))
    assert out.shape == proc(wav).shape and np.isfinite(out).all()


def test_bad_audio_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(DataError, match="broken.wav"):
        load_waveform(bad, 8000)


def test_bad_spec_names_setting():
    with pytest.raises(ConfigError, match="audio.feature"):
        AudioSpec(feature="spectrum").validate()
    with pytest.raises(ConfigError, match="audio.n_fft"):
        AudioSpec(duration_s=0.01, n_fft=256).validate()
