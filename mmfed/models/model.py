"""The multimodal model (encoders + fusion) and how a collated batch is passed to it.

`presence` is the first positional argument because Opacus' expanded-weights mode takes the batch size
from the first positional tensor; the modality tensors are keyword arguments.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# batch keys each modality needs, in the order the encoder takes them
INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "audio": ("audio",),
    "text": ("text_ids", "text_mask"),
    "video": ("video",),
    "tabular": ("tabular",),
}


class MultimodalModel(nn.Module):
    """Encodes each configured modality to [B, D], stacks them to [B, M, D], fuses to logits."""

    def __init__(self, modalities: tuple[str, ...], encoders: dict[str, nn.Module], fusion: nn.Module):
        super().__init__()
        self.modalities = tuple(modalities)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.fusion = fusion

    def forward(
        self,
        presence: torch.Tensor,
        image: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {
            "image": image,
            "audio": audio,
            "text_ids": text_ids,
            "text_mask": text_mask,
            "video": video,
            "tabular": tabular,
        }
        if presence.dim() != 2 or presence.shape[1] != len(self.modalities):
            raise ValueError(
                f"presence has shape {tuple(presence.shape)}; expected [batch, {len(self.modalities)}] "
                f"with columns {', '.join(self.modalities)}"
            )
        features = []
        for modality in self.modalities:
            inputs = [given[key] for key in INPUT_KEYS[modality]]
            if any(x is None for x in inputs):
                raise ValueError(
                    f"the model was built for modality {modality!r} but the batch lacks "
                    f"{', '.join(INPUT_KEYS[modality])}; pass a missing modality as zeros with presence False"
                )
            features.append(self.encoders[modality](*inputs))
        return self.fusion(torch.stack(features, dim=1), presence.bool())


def model_inputs(batch: dict[str, Any]) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Collated batch -> (args, kwargs) for the model: presence positional, modality tensors by name."""
    keys = [key for keys in INPUT_KEYS.values() for key in keys]
    return (batch["presence"],), {key: batch[key] for key in keys if key in batch}


def forward_batch(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Logits for a collated batch (works for the plain model and for Opacus' wrapped one)."""
    args, kwargs = model_inputs(batch)
    return model(*args, **kwargs)
