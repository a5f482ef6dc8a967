"""Typed configuration: how data is turned into tensors, how the model is built, how training runs.

Every `validate()` raises ConfigError naming the setting and what would be accepted, so a typo in a TOML
file or on the command line is caught before any data is touched.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from mmfed.errors import ConfigError

MODALITIES: tuple[str, ...] = ("image", "audio", "text", "video", "tabular")
FUSIONS: tuple[str, ...] = ("early", "late", "attention")
IMAGE_ENCODERS: tuple[str, ...] = ("cnn", "resnet18")
TEXT_ENCODERS: tuple[str, ...] = ("bert-small", "minilm")
AUDIO_FEATURES: tuple[str, ...] = ("logmel", "mfcc")


def _check_positive(setting: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(setting, f"must be > 0, got {value!r}")


def parse_modalities(
    value: str | list[str] | tuple[str, ...], setting: str = "modalities"
) -> tuple[str, ...]:
    """'image,audio' or ['image', 'audio'] -> ('image', 'audio') in canonical order, validated."""
    items = (
        [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    )
    items = [v for v in items if v]
    if not items:
        raise ConfigError(setting, f"name at least one of {', '.join(MODALITIES)}")
    unknown = [v for v in items if v not in MODALITIES]
    if unknown:
        raise ConfigError(setting, f"unknown modality {unknown[0]!r}; choose from {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in items)


@dataclass(frozen=True)
class AudioSpec:
    """Waveform -> fixed-size time-frequency feature map [1, n_features, frames]."""

    sample_rate: int = 8000
    duration_s: float = 1.0
    feature: str = "logmel"
    n_mels: int = 40
    n_mfcc: int = 20
    n_fft: int = 256
    hop_length: int = 128
    trim_db: float = 30.0  # leading/trailing silence below peak - trim_db is cut before padding

    @property
    def n_features(self) -> int:
        return self.n_mels if self.feature == "logmel" else self.n_mfcc

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.duration_s))

    @property
    def frames(self) -> int:
        return 1 + self.num_samples // self.hop_length

    def validate(self) -> None:
        if self.feature not in AUDIO_FEATURES:
            raise ConfigError("audio.feature", f"{self.feature!r} is not one of {', '.join(AUDIO_FEATURES)}")
        for name in ("sample_rate", "duration_s", "n_mels", "n_mfcc", "n_fft", "hop_length"):
            _check_positive(f"audio.{name}", getattr(self, name))
        if not self.sample_rate * self.duration_s < float("inf"):
            raise ConfigError("audio.duration_s", f"{self.duration_s} s at {self.sample_rate} Hz is too long")
        if self.n_fft > self.num_samples:
            raise ConfigError(
                "audio.n_fft", f"{self.n_fft} is longer than the clip ({self.num_samples} samples)"
            )


@dataclass(frozen=True)
class ImageSpec:
    size: int = 28
    channels: int = 1  # 1 = grey, 3 = RGB; inputs are converted to this
    mean: float = 0.5
    std: float = 0.5

    def validate(self) -> None:
        _check_positive("image.size", self.size)
        if self.channels not in (1, 3):
            raise ConfigError("image.channels", f"must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        _check_positive("image.std", self.std)


@dataclass(frozen=True)
class TextSpec:
    max_length: int = 32
    deidentify: bool = True  # scrub identifiers before tokenising (mmfed.data.deid)
    mask_diagnosis: bool = False  # label-leak guard: mask diagnosis terms too

    def validate(self) -> None:
        if self.max_length < 2:
            raise ConfigError(
                "text.max_length", f"must be >= 2 (room for [CLS] and [SEP]), got {self.max_length}"
            )


@dataclass(frozen=True)
class VideoSpec:
    frames: int = 8
    size: int = 48
    channels: int = 3

    def validate(self) -> None:
        _check_positive("video.frames", self.frames)
        _check_positive("video.size", self.size)
        if self.channels not in (1, 3):
            raise ConfigError("video.channels", f"must be 1 or 3, got {self.channels!r}")


@dataclass(frozen=True)
class TabularSpec:
    """Inline `name=value;name=value` cells (e.g. `age=54;sex=M`) -> a fixed-length vector: each numeric
    feature gives (value / scale, known flag), each categorical one a one-hot over its values (all zero
    when missing). Names not listed here are ignored."""

    numeric: tuple[tuple[str, float], ...] = (("age", 100.0),)
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = (("sex", ("M", "F")),)

    @property
    def width(self) -> int:
        return 2 * len(self.numeric) + sum(len(values) for _, values in self.categorical)

    def validate(self) -> None:
        names = [n for n, _ in self.numeric] + [n for n, _ in self.categorical]
        if not names:
            raise ConfigError("tabular", "name at least one numeric or categorical feature")
        if len(set(names)) != len(names):
            raise ConfigError("tabular", f"feature names repeat: {names}")
        for name, scale in self.numeric:
            _check_positive(f"tabular.numeric.{name}", scale)
        for name, values in self.categorical:
            if not values:
                raise ConfigError(f"tabular.categorical.{name}", "list at least one value")


@dataclass(frozen=True)
class DataSpec:
    """How every modality is turned into tensors; shared by all sites so their tensors line up."""

    audio: AudioSpec = field(default_factory=AudioSpec)
    image: ImageSpec = field(default_factory=ImageSpec)
    text: TextSpec = field(default_factory=TextSpec)
    video: VideoSpec = field(default_factory=VideoSpec)
    tabular: TabularSpec = field(default_factory=TabularSpec)

    def validate(self) -> None:
        for spec in (self.audio, self.image, self.text, self.video, self.tabular):
            spec.validate()


@dataclass(frozen=True)
class ModelConfig:
    modalities: tuple[str, ...] = ("image", "audio")
    num_classes: int = 10
    fusion: str = "attention"
    hidden_dim: int = 64
    image_encoder: str = "cnn"
    text_encoder: str = "bert-small"
    freeze_text: bool = False  # pretrained MiniLM: freeze all of it (True) or train its last layer (False)
    attention_heads: int = 4
    dropout: float = 0.1
    # input shapes the encoders need (taken from the DataSpec by `ModelConfig.for_data`)
    image_channels: int = 1
    audio_features: int = 40
    video_channels: int = 3
    text_vocab_size: int = 30522
    tabular_features: int = 4

    def validate(self) -> None:
        parse_modalities(self.modalities)
        if self.fusion not in FUSIONS:
            raise ConfigError("fusion", f"{self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ConfigError(
                "image_encoder", f"{self.image_encoder!r} is not one of {', '.join(IMAGE_ENCODERS)}"
            )
        if self.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(
                "text_encoder", f"{self.text_encoder!r} is not one of {', '.join(TEXT_ENCODERS)}"
            )
        if self.num_classes < 2:
            raise ConfigError("num_classes", f"need at least 2 classes, got {self.num_classes}")
        _check_positive("hidden_dim", self.hidden_dim)
        _check_positive("attention_heads", self.attention_heads)
        if self.hidden_dim % self.attention_heads:
            raise ConfigError(
                "attention_heads",
                f"hidden_dim {self.hidden_dim} must be divisible by {self.attention_heads} heads",
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")

    @classmethod
    def for_data(cls, data: DataSpec, **kwargs: Any) -> ModelConfig:
        kwargs.setdefault("image_channels", data.image.channels)
        kwargs.setdefault("audio_features", data.audio.n_features)
        kwargs.setdefault("video_channels", data.video.channels)
        kwargs.setdefault("tabular_features", data.tabular.width)
        return cls(**kwargs)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    augment: bool = True
    modality_dropout: float = 0.3  # probability of hiding one modality of a training sample (fusion only)
    device: str = "auto"  # auto = CUDA when present, else CPU
    num_workers: int = 0

    def validate(self) -> None:
        """Named as `mmfed train`'s options are (--batch-size: 'batch-size')."""
        import math
        import re

        for name in ("epochs", "batch_size", "lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # lr = inf would train to nan
                raise ConfigError(name.replace("_", "-"), f"must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("weight-decay", f"must be a finite number >= 0, got {self.weight_decay!r}")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError("modality-dropout", f"must be in [0, 1), got {self.modality_dropout}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be in [0, {2**32 - 1}], got {self.seed}")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device):
            raise ConfigError("device", f"{self.device!r}: use auto, cpu, cuda or cuda:N")


def to_jsonable(obj: Any) -> Any:
    """Dataclass tree -> plain JSON data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    return obj


def config_hash(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]
