"""Offline speech synthesis through libespeak-ng (mmfed.data.tts)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from mmfed.data import tts
from mmfed.errors import DataError


def _median_f0(wave: np.ndarray, sr: int) -> float:
    """Median fundamental frequency over the loud frames (autocorrelation peak in 60..400 Hz)."""
    frame, hop = 1024, 256
    lo, hi = sr // 400, sr // 60
    f0s = []
    energy_floor = 0.1 * max(
        float(np.sum(wave[i : i + frame] ** 2)) for i in range(0, wave.size - frame, hop)
    )
    for start in range(0, wave.size - frame, hop):
        x = wave[start : start + frame].astype(np.float64)
        if np.sum(x**2) < energy_floor:
            continue
        x = x - x.mean()
        ac = np.correlate(x, x, mode="full")[frame - 1 :]
        f0s.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


def test_seven_is_audible_float_audio_of_plausible_length():
    wave, sr = tts.synthesize("seven")
    assert sr == 22050
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.2 <= wave.size / sr <= 2.0
    assert np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave**2)) > 0.02  # speech, not near-silence


def test_same_arguments_give_identical_samples_whatever_came_before():
    args = {"voice": "en-gb-scotland+f3", "rate": 160, "pitch": 55, "pitch_range": 40}
    first, _ = tts.synthesize("seven", **args)
    # libespeak-ng keeps pitch-flutter and gain state between calls; other speech in between must not leak.
    tts.synthesize("three four five", voice="en-us", rate=220, pitch=70)
    again, _ = tts.synthesize("seven", **args)
    np.testing.assert_array_equal(first, again)


def test_parameters_change_the_output():
    base, _ = tts.synthesize("seven")
    slow, _ = tts.synthesize("seven", rate=120)
    high, sr = tts.synthesize("seven", pitch=80)
    assert slow.size > base.size * 1.2
    assert _median_f0(high, sr) > _median_f0(base, sr) * 1.15


def test_different_voices_give_different_speakers():
    male, sr = tts.synthesize("seven", voice="en")
    female, _ = tts.synthesize("seven", voice="en+f3")
    assert male.size != female.size or not np.array_equal(male, female)
    # The female variant speaks well over half an octave higher.
    assert _median_f0(female, sr) > 1.5 * _median_f0(male, sr)


def test_concurrent_calls_match_sequential_ones():
    words = ["zero", "one", "two", "three", "four", "five"]
    expected = [tts.synthesize(w, voice="en-us")[0] for w in words]
    results: dict[int, np.ndarray] = {}

    def speak(i: int) -> None:
        results[i] = tts.synthesize(words[i], voice="en-us")[0]

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(words))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, wave in enumerate(expected):
        np.testing.assert_array_equal(results[i], wave)


def test_unknown_voice_is_a_data_error_naming_it():
    with pytest.raises(DataError, match="zz-nope"):
        tts.synthesize("seven", voice="zz-nope")
    # The library is still usable afterwards.
    assert tts.synthesize("seven")[0].size > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rate": 10}, "rate"), ({"pitch": 101}, "pitch"), ({"pitch_range": -1}, "pitch_range")],
)
def test_out_of_range_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tts.synthesize("seven", **kwargs)


def test_empty_text_is_refused():
    with pytest.raises(ValueError, match="empty"):
        tts.synthesize("   ")


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import now raises ImportError
    with pytest.raises(DataError, match="pip install espeakng-loader"):
        tts.synthesize("seven")


def test_unloadable_library_says_what_to_install(monkeypatch, tmp_path):
    import espeakng_loader

    broken = tmp_path / "libespeak-ng.so"
    broken.write_bytes(b"not a shared object")
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(broken))
    with pytest.raises(DataError, match=r"libespeak-ng\.so.*espeakng-loader"):
        tts.synthesize("seven")


def test_available_voices_lists_the_english_accents():
    voices = tts.available_voices()
    for name in ("en", "en-us", "en-gb-scotland", "en-029"):
        assert name in voices
