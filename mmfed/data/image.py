"""Images: decode (PIL) -> grey or RGB -> torchvision transforms v2 (resize, normalise, augment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from mmfed.config import ImageSpec
from mmfed.data.decoding import image_pixels
from mmfed.data.limits import DataLimits, limits_for


@dataclass(frozen=True)
class ImageAugment:
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.08  # fraction of the image size
    rotation_deg: float = 10.0
    flip: bool = False  # off by default: a flipped digit or chest X-ray is a different image
    blur_prob: float = 0.2


def load_image(path: Path, channels: int, limits: DataLimits | None = None) -> Image.Image:
    """Decode to 'L' (grey) or 'RGB' within the site's limits (its site.toml [data], else the defaults);
    16-bit greyscale (common for X-rays) is rescaled, not clipped. A file that cannot be decoded, or is
    over a limit, -> DataError naming it."""
    return image_pixels(Path(path), channels, limits or limits_for(path))


class ImageProcessor:
    def __init__(self, spec: ImageSpec, augment: ImageAugment | None = None):
        spec.validate()
        self.spec = spec
        aug = augment or ImageAugment()
        size = (spec.size, spec.size)
        base = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        norm = [v2.Normalize([spec.mean] * spec.channels, [spec.std] * spec.channels)]
        self.plain = v2.Compose(base + [v2.Resize(size, antialias=True)] + norm)
        # augment after resizing: the same random ops on a 28x28 tensor cost a fraction of the full image
        train = [v2.Resize(size, antialias=True)]
        # one affine warp (rotate + shift + zoom) instead of crop-then-rotate: one resampling, half the cost
        train.append(v2.RandomAffine(aug.rotation_deg, translate=(aug.shift, aug.shift), scale=aug.scale))
        if aug.flip:
            train.append(v2.RandomHorizontalFlip())
        if aug.blur_prob:
            train.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=aug.blur_prob))
        self.train = v2.Compose(base + train + norm)

    def __call__(self, path: Path, augment: bool = False) -> torch.Tensor:
        """[channels, size, size] float32, normalised."""
        img = load_image(path, self.spec.channels)
        return (self.train if augment else self.plain)(img)
