"""Encoders, fusion heads and build_model(): the multimodal classifier each site trains under DP."""

from mmfed.models.build import build_model, count_parameters
from mmfed.models.model import INPUT_KEYS, MultimodalModel, forward_batch, model_inputs

__all__ = [
    "INPUT_KEYS",
    "MultimodalModel",
    "build_model",
    "count_parameters",
    "forward_batch",
    "model_inputs",
]
