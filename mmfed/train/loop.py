"""Local train and evaluate loops, shared by centralised training and every federated site."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfed.errors import ConfigError
from mmfed.models import forward_batch


def select_device(preference: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' on a machine without one is an error, not a fallback."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "device", f"{preference!r} requested but no CUDA device is visible; use auto or cpu"
        )
    return torch.device(preference)


def make_loader(dataset, collate: Callable, batch_size: int, shuffle: bool = False, seed: int = 0):
    """The one way a (non-DP) DataLoader is built: a shuffled one draws from its own seeded generator."""
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator
    )


def make_optimizer(name: str, params: list, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """adamw, or sgd with momentum 0.9 (weight decay 0 keeps an absent modality's encoder unmoved)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def is_empty(batch: object) -> bool:
    """Poisson sampling can draw an empty batch (Opacus then hands over a placeholder): skip it."""
    return not isinstance(batch, dict) or batch["label"].numel() == 0


@dataclass
class Metrics:
    loss: float = 0.0
    accuracy: float = 0.0
    examples: int = 0

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}examples": self.examples,
        }


class _Tally:
    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.correct = 0
        self.n = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        b = labels.numel()
        self.loss_sum += float(loss.detach()) * b
        self.correct += int((logits.detach().argmax(1) == labels).sum())
        self.n += b

    def result(self) -> Metrics:
        return Metrics(self.loss_sum / max(self.n, 1), self.correct / max(self.n, 1), self.n)


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    on_batch: Callable[[], None] | None = None,
) -> Metrics:
    model.train()
    tally = _Tally()
    for batch in loader:
        if on_batch:
            on_batch()
        if is_empty(batch):
            continue
        optimizer.zero_grad(set_to_none=True)
        train_step(model, batch_to(batch, device), optimizer, tally)
    return tally.result()


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    tally,
    sanitize: Callable[[], None] | None = None,
) -> None:
    """Forward, cross-entropy, backward, step (gradients already zeroed); counts the batch in `tally`.

    `sanitize` (DP): runs between backward and step, and a non-finite loss does not abort the round —
    whether it happens depends on which records were sampled, so stopping would leak it."""
    logits = forward_batch(model, batch)
    loss = F.cross_entropy(logits, batch["label"])
    finite = bool(torch.isfinite(loss))
    if not finite and sanitize is None:
        raise FloatingPointError("training loss became NaN/inf; lower the learning rate (--lr)")
    loss.backward()
    if sanitize is not None:
        sanitize()
    optimizer.step()
    if finite:
        tally.add(logits, batch["label"], loss)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device) -> Metrics:
    model.eval()
    tally = _Tally()
    for batch in loader:
        if is_empty(batch):
            continue
        batch = batch_to(batch, device)
        logits = forward_batch(model, batch)
        tally.add(logits, batch["label"], F.cross_entropy(logits, batch["label"]))
    return tally.result()
