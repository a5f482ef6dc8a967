"""Fusion heads: [B, M, D] per-modality features + [B, M] presence mask -> [B, num_classes] logits.

Every head ignores an absent modality completely: its feature is replaced by zeros (torch.where, so
even a non-finite feature cannot leak through as 0 * inf) and, for attention, it is masked as a key.
Learned vectors (CLS token, modality embeddings) are nn.Embedding lookups rather than bare
nn.Parameter, because Opacus computes per-sample gradients for Embedding in every grad-sample mode.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfed.config import ModelConfig


def zero_absent(features: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """[B, M, D] features with absent modalities' rows set to 0."""
    return torch.where(presence.unsqueeze(-1), features, torch.zeros_like(features))


class EarlyFusion(nn.Module):
    """Concatenate the (zeroed-where-absent) features and the presence flags -> MLP."""

    def __init__(self, num_modalities: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * (hidden_dim + 1), hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, features: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        flat = zero_absent(features, presence).flatten(1)
        # presence flags tell the MLP a zero feature means "absent", not "present but zero"
        return self.mlp(torch.cat([flat, presence.to(flat.dtype)], dim=1))


class LateFusion(nn.Module):
    """One linear head per modality; logits = mean of the present modalities' logits."""

    def __init__(self, num_modalities: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_modalities))

    def forward(self, features: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        features = self.dropout(features)
        logits = torch.stack([head(features[:, i]) for i, head in enumerate(self.heads)], dim=1)
        logits = zero_absent(logits, presence)
        # a sample with no modality at all gets zero logits rather than 0/0
        count = presence.sum(dim=1, keepdim=True).clamp(min=1).to(logits.dtype)
        return logits.sum(dim=1) / count


class SelfAttention(nn.Module):
    """Multi-head self-attention from nn.Linear (nn.MultiheadAttention needs Opacus' DP replacement)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5  # [B, heads, T, T]
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = self.dropout(scores.softmax(dim=-1))
        return self.out((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class AttentionFusion(nn.Module):
    """A CLS token plus one token per modality (with a learned modality embedding) through a transformer
    block; absent modalities are masked out as keys, and the CLS output feeds the classifier."""

    def __init__(self, num_modalities: int, hidden_dim: int, num_classes: int, heads: int, dropout: float):
        super().__init__()
        self.cls = nn.Embedding(1, hidden_dim)
        self.modality_embedding = nn.Embedding(num_modalities, hidden_dim)
        self.block = TransformerBlock(hidden_dim, heads, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)
        self.register_buffer("modality_index", torch.arange(num_modalities), persistent=False)

    def forward(self, features: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        batch, num_modalities, _ = features.shape
        # index tensors expanded over the batch, so the Embedding's input has a per-sample dimension;
        # contiguous because Opacus' ghost-clipping embedding norm sampler calls .view() on it
        cls = self.cls(torch.zeros(batch, 1, dtype=torch.long, device=features.device))
        modality = self.modality_embedding(self.modality_index.expand(batch, num_modalities).contiguous())
        tokens = torch.cat([cls, zero_absent(features, presence) + modality], dim=1)
        # CLS is always a valid key, so no softmax row is all -inf
        key_mask = torch.cat([torch.ones_like(presence[:, :1]), presence], dim=1)
        out = self.block(tokens, key_mask)
        return self.head(self.norm(out[:, 0]))


def build_fusion(cfg: ModelConfig, num_modalities: int) -> nn.Module:
    if cfg.fusion == "early":
        return EarlyFusion(num_modalities, cfg.hidden_dim, cfg.num_classes, cfg.dropout)
    if cfg.fusion == "late":
        return LateFusion(num_modalities, cfg.hidden_dim, cfg.num_classes, cfg.dropout)
    return AttentionFusion(num_modalities, cfg.hidden_dim, cfg.num_classes, cfg.attention_heads, cfg.dropout)
