"""Audio: decode (soundfile) -> one sample rate (librosa) -> trim silence -> fixed length -> log-mel or MFCC,
normalised.

The fixed-length waveform and its un-augmented features are cached on disk keyed by the file's content,
so a second epoch (or a second run) skips decoding and resampling. Augmentation works on the cached
waveform (noise, time shift, speed; pitch shift optional because it costs ~20x a feature extraction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import librosa
import numpy as np

from mmfed.config import AudioSpec
from mmfed.data.cache import ArrayCache
from mmfed.data.decoding import read_audio
from mmfed.data.limits import DataLimits, limits_for


@dataclass(frozen=True)
class AudioAugment:
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (15.0, 35.0)
    max_shift_s: float = 0.1
    speed_prob: float = 0.3
    speed_range: tuple[float, float] = (0.9, 1.1)
    pitch_prob: float = 0.0  # off by default: librosa's phase vocoder is slow
    pitch_semitones: float = 2.0


def load_waveform(path: Path, sample_rate: int, limits: DataLimits | None = None) -> np.ndarray:
    """Decode (soundfile: WAV, FLAC, OGG, MP3) as mono float32 at `sample_rate`, within the site's limits
    (its site.toml [data], else the defaults): an over-long, truncated or undecodable file -> DataError
    naming it, before more than a block of it is in memory."""
    y, rate = read_audio(Path(path), limits or limits_for(path))
    if rate != sample_rate:
        y = librosa.resample(y, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


def fit_length(y: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Trim leading/trailing silence, then centre-pad or centre-crop to exactly spec.num_samples."""
    if spec.trim_db > 0 and np.abs(y).max() > 0:
        trimmed, _ = librosa.effects.trim(
            y, top_db=spec.trim_db, frame_length=spec.n_fft, hop_length=spec.hop_length
        )
        if trimmed.size >= spec.n_fft // 4:  # never trim a quiet clip down to nothing
            y = trimmed
    n = spec.num_samples
    if y.size >= n:
        start = (y.size - n) // 2
        return np.ascontiguousarray(y[start : start + n])
    pad = n - y.size
    return np.pad(y, (pad // 2, pad - pad // 2))


def features(y: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Fixed-length waveform -> [1, n_features, frames] float32, normalised per utterance."""
    mel = librosa.feature.melspectrogram(
        y=y, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, n_mels=spec.n_mels
    )
    feat = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    if spec.feature == "mfcc":
        feat = librosa.feature.mfcc(S=feat, n_mfcc=spec.n_mfcc)
    feat = (feat - feat.mean()) / (feat.std() + 1e-5)
    return feat[None].astype(np.float32)


def augment_waveform(
    y: np.ndarray, spec: AudioSpec, aug: AudioAugment, rng: np.random.Generator
) -> np.ndarray:
    n = y.size
    if aug.speed_prob and rng.random() < aug.speed_prob:
        rate = rng.uniform(*aug.speed_range)  # resampling changes speed and pitch together, cheaply
        positions = np.arange(0, n, rate)
        y = np.interp(positions, np.arange(n), y).astype(np.float32)
        y = np.pad(y, (0, max(0, n - y.size)))[:n]
    if aug.pitch_prob and rng.random() < aug.pitch_prob:
        steps = rng.uniform(-aug.pitch_semitones, aug.pitch_semitones)
        y = librosa.effects.pitch_shift(y, sr=spec.sample_rate, n_steps=steps).astype(np.float32)
    if aug.max_shift_s:
        shift = int(
            rng.integers(
                -int(aug.max_shift_s * spec.sample_rate), int(aug.max_shift_s * spec.sample_rate) + 1
            )
        )
        y = np.roll(y, shift)
        if shift > 0:
            y[:shift] = 0
        elif shift < 0:
            y[shift:] = 0
    if aug.noise_prob and rng.random() < aug.noise_prob:
        power = float(np.mean(y**2)) + 1e-10
        snr = rng.uniform(*aug.snr_db)
        y = y + rng.normal(0.0, np.sqrt(power / 10 ** (snr / 10)), size=y.shape).astype(np.float32)
    return y


class AudioProcessor:
    """path -> feature tensor (numpy) with an on-disk cache; `augment` uses the cached waveform."""

    def __init__(self, spec: AudioSpec, cache_dir: Path | None = None, augment: AudioAugment | None = None):
        spec.validate()
        self.spec = spec
        self.augment = augment or AudioAugment()
        self.cache = ArrayCache(cache_dir, "audio")
        self._key = repr(sorted(asdict(spec).items()))

    def waveform(self, path: Path) -> np.ndarray:
        cached = self.cache.get(path, "wave:" + self._key)
        if cached is not None:
            return cached
        y = fit_length(load_waveform(path, self.spec.sample_rate), self.spec)
        self.cache.put(path, "wave:" + self._key, y)
        return y

    def __call__(self, path: Path, rng: np.random.Generator | None = None) -> np.ndarray:
        """Features for `path`; with an rng, augmented (and so never from the feature cache)."""
        if rng is not None:
            return features(augment_waveform(self.waveform(path), self.spec, self.augment, rng), self.spec)
        cached = self.cache.get(path, "feat:" + self._key)
        if cached is not None:
            return cached
        feat = features(self.waveform(path), self.spec)
        self.cache.put(path, "feat:" + self._key, feat)
        return feat
