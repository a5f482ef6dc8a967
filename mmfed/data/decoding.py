"""A record's files decoded within the site's limits (mmfed.data.limits), for `mmfed data check` (which
decodes every file it vouches for) and for the training-time loaders (which decode the same way, so what
passed the check decodes, and what did not cannot exhaust memory).

Every refusal is a FileProblem: `problem` says what is wrong and what to do, without the path, so the
manifest check can name the file by its manifest cell; str() names the file by its path.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmfed.data.limits import DataLimits, size_problem
from mmfed.errors import DataError

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # PIL never runs its other plugins here
AUDIO_BLOCK = 1 << 20  # samples (all channels) decoded at a time: bounded memory whatever the file's length


class FileProblem(DataError):
    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def check_size(path: Path, limits: DataLimits) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FileProblem(path, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise FileProblem(path, "is empty (0 bytes); copy it again from the source")
    problem = size_problem(size, limits)
    if problem:
        raise FileProblem(path, problem)


def _pixels_problem(width: int, height: int, limits: DataLimits, what: str) -> str | None:
    if width * height > limits.max_image_pixels:
        return (
            f"{what} {width}x{height} = {width * height:,} pixels, over the limit "
            f"({limits.setting('max_image_pixels')}); downscale it, or raise the limit in site.toml [data]"
        )
    return None


def open_image(path: Path, limits: DataLimits):
    """The image fully decoded (PIL, any mode), its size checked against max_image_pixels before any pixel
    is decoded; truncated, corrupt and oversized files -> FileProblem."""
    from PIL import Image, UnidentifiedImageError

    check_size(path, limits)
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels  # PIL's own guard inside open(), at the site's limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by our rule
            img = Image.open(path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # over twice the limit: PIL refused it from the header
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise FileProblem(path, _too_many_pixels(int(found.group(1)) if found else 0, limits)) from None
    except UnidentifiedImageError:
        raise FileProblem(path, "is not an image (expected PNG, JPEG, BMP, GIF, TIFF or WebP)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on a broken header
        raise FileProblem(path, f"is a corrupt image ({type(exc).__name__}); export it again") from None
    with img:
        problem = _pixels_problem(*img.size, limits, "has")
        if problem:
            raise FileProblem(path, problem)
        try:
            img.load()
        except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, broken compression
            truncated = "truncated" in str(exc) or isinstance(exc, EOFError)
            raise FileProblem(
                path,
                "is truncated (the file ends before the image does); copy it again from the source"
                if truncated
                else f"cannot be decoded ({type(exc).__name__}: {str(exc)[:80]}); export it again",
            ) from None
    return img


def image_pixels(path: Path, channels: int, limits: DataLimits):
    """Decoded (open_image), then 'L' (grey) or 'RGB' (to_channels)."""
    return to_channels(open_image(path, limits), channels, path)


def to_channels(img, channels: int, path: Path):
    """'L' (grey) or 'RGB': 16-bit greyscale (common for X-rays) is rescaled, not clipped; transparent
    areas become black; CMYK, palette and the other modes are converted."""
    from PIL import Image

    try:
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.array(img, dtype=np.float32)  # in place below: 4 bytes a pixel, not 3 copies
            lo, hi = float(arr.min()), float(arr.max())
            if hi > lo:
                arr -= lo
                arr /= hi - lo
                arr *= 255.0
            else:
                arr[:] = 0
            img = Image.fromarray(arr.astype(np.uint8), mode="L")
        if img.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("L" if channels == 1 else "RGB")
    except FileProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - a mode PIL cannot convert
        raise FileProblem(path, f"has pixels of mode {img.mode!r} that cannot be converted ({exc})") from None


def _too_many_pixels(pixels: int, limits: DataLimits) -> str:
    size = f"{pixels:,} pixels" if pixels else "more pixels than the limit allows"
    return (
        f"has {size}, over the limit ({limits.setting('max_image_pixels')}): a decompression bomb or an "
        "unusually large image; downscale it, or raise the limit in site.toml [data]"
    )


def audio_blocks(path: Path, limits: DataLimits) -> Iterator[tuple[np.ndarray, int]]:
    """(block [frames, channels] float32, sample rate) over the whole file, checked as it goes: duration
    under max_audio_seconds (before decoding, and again as decoded: headers can lie), finite samples,
    not truncated, not empty."""
    import soundfile

    check_size(path, limits)
    try:
        sound = soundfile.SoundFile(str(path))
    except Exception:  # noqa: BLE001 - libsndfile raises several types for undecodable input
        raise FileProblem(path, "is not a readable audio file (expected WAV, FLAC, OGG or MP3)") from None
    with sound:
        rate, declared, kind = sound.samplerate, sound.frames, sound.format
        limit = limits.max_audio_seconds
        if rate <= 0:
            raise FileProblem(path, f"declares a sample rate of {rate} Hz; export it again")
        if declared / rate > limit:
            raise FileProblem(path, _too_long(declared / rate, limits))
        missing = _wav_missing_bytes(path) if kind in ("WAV", "WAVEX") else 0
        if missing:
            raise FileProblem(path, f"is truncated ({missing:,} bytes of audio missing); copy it again")
        step = max(1, AUDIO_BLOCK // max(sound.channels, 1))
        decoded = 0
        while True:
            try:
                block = sound.read(step, dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001
                raise FileProblem(path, f"cannot be decoded after {decoded / rate:.1f} s ({exc})") from None
            if not len(block):
                break
            decoded += len(block)
            if decoded / rate > limit:
                raise FileProblem(path, _too_long(decoded / rate, limits))
            if not np.isfinite(block).all():
                raise FileProblem(path, "holds NaN or infinite samples; export it again")
            yield block, rate
    if decoded == 0:
        raise FileProblem(path, "holds no audio samples (0 frames)")
    if kind in ("FLAC", "WAV", "WAVEX") and decoded < declared:
        raise FileProblem(path, f"is truncated ({decoded:,} of {declared:,} frames); copy it again")


def _too_long(seconds: float, limits: DataLimits) -> str:
    return (
        f"is {seconds:,.0f} s long, over the limit ({limits.setting('max_audio_seconds')}); cut it into "
        "shorter records, or raise the limit in site.toml [data]"
    )


def _wav_missing_bytes(path: Path) -> int:
    """How many bytes of audio a WAV's header promises that the file does not hold (0: none missing, or
    a recorder's 'size unknown' header)."""
    with path.open("rb") as fh:
        head = fh.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return 0
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"data":
                if size in (0, 0xFFFFFFFF):  # streamed: the recorder never wrote the size
                    return 0
                start = fh.tell()
                end = fh.seek(0, 2)
                return max(0, size - (end - start))
            fh.seek(size + (size & 1), 1)


def read_audio(path: Path, limits: DataLimits) -> tuple[np.ndarray, int]:
    """The whole recording as mono float32 (channels averaged), and its sample rate."""
    parts, rate = [], 0
    for block, rate in audio_blocks(path, limits):  # noqa: B007 - the rate is the same for every block
        parts.append(block.mean(axis=1, dtype=np.float32))
    return np.concatenate(parts), rate


def verify_audio(path: Path, limits: DataLimits) -> None:
    for _ in audio_blocks(path, limits):
        pass


def open_video(path: Path, limits: DataLimits):
    """An open PyAV container whose first video stream is a moving picture within the limits (frame size,
    declared duration); the caller decodes, with `frames_within_limits`."""
    import av

    check_size(path, limits)
    try:
        container = av.open(str(path))
    except Exception:  # noqa: BLE001 - PyAV raises several types for undecodable input
        raise FileProblem(path, "is not a readable video file (corrupt, truncated, or not a video)") from None
    try:
        if not container.streams.video:
            raise FileProblem(path, "has no video stream")
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise FileProblem(path, "is a still image, not a video; put it in the image column")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        problem = _pixels_problem(width, height, limits, "has frames")
        if problem:
            raise FileProblem(path, problem)
        seconds = max(
            container.duration / 1e6 if container.duration else 0.0,
            float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0,
        )
        if seconds > limits.max_video_seconds:
            raise FileProblem(path, _video_too_long(seconds, limits))
    except BaseException:
        container.close()
        raise
    return container


def frames_within_limits(container, path: Path, limits: DataLimits) -> Iterator:
    """The first video stream's frames, decoded one at a time, each checked: size, and time so far."""
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    start = None
    try:
        for i, frame in enumerate(container.decode(video=0)):
            at = frame.time if frame.time is not None else i / rate
            start = at if start is None else start  # streams need not start at 0 (MPEG-TS rarely does)
            at -= start
            if at > limits.max_video_seconds:
                raise FileProblem(path, _video_too_long(at, limits))
            problem = _pixels_problem(frame.width, frame.height, limits, "has frames")
            if problem:
                raise FileProblem(path, problem)
            yield frame
    except FileProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types mid-stream
        raise FileProblem(path, f"cannot be decoded ({type(exc).__name__}); export it again") from None


def _video_too_long(seconds: float, limits: DataLimits) -> str:
    return (
        f"is {seconds:,.0f} s long, over the limit ({limits.setting('max_video_seconds')}); cut it into "
        "shorter clips, or raise the limit in site.toml [data]"
    )


def verify_video(path: Path, limits: DataLimits) -> None:
    """Every frame decodes; at least one."""
    with open_video(path, limits) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.options = {"err_detect": "explode"}  # a damaged frame fails, not concealed
        count = sum(1 for _ in frames_within_limits(container, path, limits))
    if not count:
        raise FileProblem(path, "holds no video frames")
