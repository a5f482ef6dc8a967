"""Images: decode (PIL) -> grey or RGB -> torchvision transforms v2 (resize, normalise, augment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from mmfed.config import ImageSpec
from mmfed.errors import DataError


@dataclass(frozen=True)
class ImageAugment:
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.08  # fraction of the image size
    rotation_deg: float = 10.0
    flip: bool = False  # off by default: a flipped digit or chest X-ray is a different image
    blur_prob: float = 0.2


def load_image(path: Path, channels: int) -> Image.Image:
    """Decode to 'L' (grey) or 'RGB'; 16-bit greyscale (common for X-rays) is rescaled, not clipped."""
    try:
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); check it is a PNG/JPEG/BMP/TIFF") from exc
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))  # transparent areas become black
        img = Image.alpha_composite(background, img)
    return img.convert("L" if channels == 1 else "RGB")


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
