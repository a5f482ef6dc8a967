"""build_model(cfg): the encoders cfg.modalities needs plus the fusion head cfg.fusion names."""

from __future__ import annotations

from torch import nn

from mmfed.config import ModelConfig
from mmfed.errors import ConfigError
from mmfed.models.encoders import build_encoder
from mmfed.models.fusion import build_fusion
from mmfed.models.model import MultimodalModel


def build_model(cfg: ModelConfig) -> MultimodalModel:
    """A model for cfg; presence columns and encoders follow the order of cfg.modalities."""
    cfg.validate()
    modalities = tuple(cfg.modalities)
    if len(set(modalities)) != len(modalities):
        raise ConfigError("modalities", f"{', '.join(modalities)} names a modality twice; name each once")
    encoders = {m: build_encoder(m, cfg) for m in modalities}
    return MultimodalModel(modalities, encoders, build_fusion(cfg, len(modalities)))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad when trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
