"""Video: decode with PyAV, sample T frames uniformly over the clip, resize, normalise -> [C, T, H, W]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmfed.config import VideoSpec
from mmfed.data.cache import ArrayCache
from mmfed.errors import DataError


def sample_indices(num_frames: int, t: int) -> np.ndarray:
    """T indices spread uniformly (centres of T equal segments); repeats frames of a short clip."""
    return np.minimum(((np.arange(t) + 0.5) * num_frames / t).astype(np.int64), num_frames - 1)


def decode_sampled_frames(path: Path, t: int, channels: int) -> np.ndarray:
    """T frames spread uniformly over the first video stream, uint8 [T, H, W, C].

    Only the chosen frames are kept, so an hour-long clip costs decode time but not memory.
    """
    import av

    fmt = "gray" if channels == 1 else "rgb24"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream in the file")
            total = container.streams.video[0].frames
            if total <= 0:  # container does not say: count packets (no decoding needed)
                total = sum(1 for p in container.demux(video=0) if p.size)
                container.seek(0)
            wanted = sample_indices(max(total, 1), t)
            wanted_set = set(wanted.tolist())
            keep: dict[int, np.ndarray] = {}
            last = None
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted_set:
                    keep[i] = frame.to_ndarray(format=fmt)
                last = (i, frame)
                if i >= wanted[-1]:
                    break
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types
        raise DataError(f"{path}: cannot decode video ({exc})") from exc
    if last is None:
        raise DataError(f"{path}: the video holds no frames")
    fallback = last[1].to_ndarray(format=fmt)  # the stream was shorter than its header said
    arr = np.stack([keep.get(int(i), keep.get(max(keep, default=-1), fallback)) for i in wanted])
    return arr[..., None] if arr.ndim == 3 else arr


class VideoProcessor:
    def __init__(self, spec: VideoSpec, cache_dir: Path | None = None):
        spec.validate()
        self.spec = spec
        self.cache = ArrayCache(cache_dir, "video")  # decoding is the slow part: cache the sampled frames
        self._key = f"{spec.frames}:{spec.size}:{spec.channels}"

    def __call__(self, path: Path) -> torch.Tensor:
        cached = self.cache.get(path, self._key)
        if cached is None:
            picked = decode_sampled_frames(path, self.spec.frames, self.spec.channels)
            x = torch.from_numpy(picked).permute(0, 3, 1, 2).float() / 255.0  # [T, C, H, W]
            x = F.interpolate(x, size=(self.spec.size, self.spec.size), mode="bilinear", antialias=True)
            cached = x.permute(1, 0, 2, 3).contiguous().numpy()  # [C, T, H, W]
            self.cache.put(path, self._key, cached)
        return (torch.from_numpy(cached) - 0.5) / 0.5
