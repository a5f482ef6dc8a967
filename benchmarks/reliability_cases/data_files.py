"""Site data as exports produce it: encodings, broken and hostile files, half-copied folders."""

from __future__ import annotations

from pathlib import Path

from reliability import Case

from reliability_cases.sites import site


def _utf16_manifest(work: Path) -> list[str]:
    path = site(work) / "manifest.csv"
    path.write_bytes(path.read_text().encode("utf-16"))
    return ["data", "check", "site_a"]


def _truncated_png(work: Path) -> list[str]:
    root = site(work)
    image = next((root / "images").glob("*.png")) if (root / "images").is_dir() else next(root.rglob("*.png"))
    image.write_bytes(image.read_bytes()[:60])
    return ["data", "check", "site_a"]


CASES = [
    Case("UTF-16 manifest (Excel 'Unicode text')", _utf16_manifest, wants="UTF-8"),
    Case("truncated PNG", _truncated_png, wants=".png"),
]
