"""A manifest's file cells, checked before any training: inside the site directory, readable, and of the
kind their column says (a cheap header probe, so a mislabelled or corrupt file is caught at validation)."""

from __future__ import annotations

from pathlib import Path

_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"GIF8", b"II*\x00", b"MM\x00*")


def check_file(site_dir: Path, cell: str, modality: str) -> tuple[Path | None, str | None]:
    """Resolve a path cell; return (path, None) or (None, problem)."""
    rel = Path(cell)
    if rel.is_absolute():
        return None, f"path {cell!r} is absolute; give it relative to the site directory"
    path = (site_dir / rel).resolve()
    if not path.is_relative_to(site_dir.resolve()):
        return None, f"path {cell!r} points outside the site directory; move the file inside it"
    if not path.exists():
        return None, f"file {cell!r} not found in {site_dir}"
    if not path.is_file():
        return None, f"{cell!r} is not a file"
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return None, f"file {cell!r} cannot be read ({exc.strerror or exc}); check its permissions"
    if not head:
        return None, f"file {cell!r} is empty"
    problem = _probe(path, head, modality)
    return (None, f"file {cell!r} {problem}") if problem else (path, None)


def _probe(path: Path, head: bytes, modality: str) -> str | None:
    """Cheap header check so a mislabelled or corrupt file is caught at validation, not mid-training."""
    if modality == "image":
        if not (head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
            return "is not an image (expected PNG, JPEG, BMP, GIF, TIFF or WebP)"
        return None
    if modality == "audio":
        import soundfile

        try:
            info = soundfile.info(str(path))
        except Exception:  # noqa: BLE001 - soundfile raises several types for undecodable input
            return "is not a readable audio file (expected WAV, FLAC or OGG)"
        return None if info.frames > 0 else "holds no audio samples"
    if modality == "video":
        import av

        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    return "has no video stream"
                if container.format.name == "image2" or container.format.name.endswith("_pipe"):
                    return "is a still image, not a video; put it in the image column"
        except Exception:  # noqa: BLE001 - PyAV raises several types for undecodable input
            return "is not a readable video file"
    return None
