"""ResNet-18 image encoder made Opacus-safe. Its own module because importing torchvision takes seconds.

torchvision's ResNet is used as is, except: GroupNorm instead of BatchNorm (per-sample statistics),
conv1 taking `in_channels`, and no in-place operations on a layer's output. Opacus' hooks mode wraps each
layer's output in a backward-hook view, and torchvision's `out += identity` / `ReLU(inplace=True)` on that
view fail ("Output 0 of BackwardHookFunction is a view and is being modified inplace").
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


def _group_norm(channels: int) -> nn.GroupNorm:
    # module-level (not a lambda): ResNet keeps a reference, and the model must deep-copy and pickle
    return nn.GroupNorm(min(32, channels), channels)


class OutOfPlaceBasicBlock(BasicBlock):
    """torchvision's BasicBlock with the residual addition out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def resnet18_encoder(in_channels: int, out_dim: int) -> ResNet:
    """ResNet-18 (randomly initialised: nothing downloads) mapping [B, in_channels, H, W] -> [B, out_dim]."""
    model = ResNet(OutOfPlaceBasicBlock, [2, 2, 2, 2], num_classes=out_dim, norm_layer=_group_norm)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model
