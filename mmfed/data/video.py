"""Video: decode with PyAV, sample T frames uniformly over the clip, resize, normalise -> [C, T, H, W]."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmfed.config import VideoSpec
from mmfed.data.cache import ArrayCache
from mmfed.data.decoding import FileProblem, frames_within_limits, open_video
from mmfed.data.limits import DataLimits, limits_for


def sample_indices(num_frames: int, t: int) -> np.ndarray:
    """T indices spread uniformly (centres of T equal segments); repeats frames of a short clip."""
    return np.minimum(((np.arange(t) + 0.5) * num_frames / t).astype(np.int64), num_frames - 1)


def decode_sampled_frames(path: Path, t: int, channels: int, limits: DataLimits | None = None) -> np.ndarray:
    """T frames spread uniformly over the first video stream, uint8 [T, H, W, C].

    Only the chosen frames are kept, so a long clip costs decode time but not memory; the site's limits
    (its site.toml [data], else the defaults) bound the frame size and the clip's length, as declared and
    as decoded: a clip over them, or one that cannot be decoded -> DataError naming the file.
    """
    limits = limits or limits_for(path)
    fmt = "gray" if channels == 1 else "rgb24"
    path = Path(path)
    with open_video(path, limits) as container:
        try:
            picked = _pick(container, path, t, fmt, limits)
        except FileProblem:
            raise
        except Exception as exc:  # noqa: BLE001 - PyAV raises many types
            raise FileProblem(path, f"cannot be decoded ({type(exc).__name__}); export it again") from None
    keep, wanted, fallback = picked
    arr = np.stack([keep.get(int(i), keep.get(max(keep, default=-1), fallback)) for i in wanted])
    return arr[..., None] if arr.ndim == 3 else arr


def _pick(container, path: Path, t: int, fmt: str, limits: DataLimits):
    total = container.streams.video[0].frames
    if total <= 0:  # container does not say: count packets (no decoding needed)
        total = sum(1 for p in container.demux(video=0) if p.size)
        container.seek(0)
    wanted = sample_indices(max(total, 1), t)
    wanted_set = set(wanted.tolist())
    keep: dict[int, np.ndarray] = {}
    last = None
    with closing(frames_within_limits(container, path, limits)) as frames:
        for i, frame in enumerate(frames):
            if i in wanted_set:
                keep[i] = frame.to_ndarray(format=fmt)
            last = frame
            if i >= wanted[-1]:
                break
    if last is None:
        raise FileProblem(path, "holds no video frames")
    return keep, wanted, last.to_ndarray(format=fmt)  # the last: the stream was shorter than its header said


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
