"""A site directory's own files (manifest.csv, labels.txt, site.toml) read as text first, so that an
undecodable or unparsable one is reported with its file and line: the csv and codec errors name neither
(and hold the text around the bad byte, which may be a record)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mmfed.errors import MMFedError

SITE_FILES = ("manifest.csv", "labels.txt", "site.toml")


def check_site_files(site_dir: Path) -> None:
    """Undecodable or unparsable manifest.csv, labels.txt, site.toml -> a message naming the file and
    line. A missing file is left to load_manifest, which says what is missing."""
    for name in SITE_FILES:
        path = Path(site_dir) / name
        if path.is_file():
            text = _utf8_text(path)
            if name == "manifest.csv":
                _check_csv(path, text)


def _utf8_text(path: Path) -> str:
    data = path.read_bytes()
    excel = " (Excel: CSV UTF-8)" if path.suffix == ".csv" else ""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        utf16 = "it is UTF-16; " if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise MMFedError(f"{path}, line {line}: not UTF-8 text; {utf16}save it as UTF-8{excel}") from None
    if "\0" in text:  # UTF-16 without a byte-order mark decodes, as text full of NULs
        line = text.count("\n", 0, text.index("\0")) + 1
        raise MMFedError(f"{path}, line {line}: holds NUL bytes (UTF-16?); save it as UTF-8{excel}")
    return text


def _check_csv(path: Path, text: str) -> None:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for _ in reader:
            pass
    except csv.Error as exc:
        problem = (
            f"a cell is longer than {csv.field_size_limit()} characters; shorten that text"
            if "field limit" in str(exc)
            else f"not readable as CSV ({exc})"
        )
        raise MMFedError(f"{path}, line {reader.line_num}: {problem}") from None


def load_site_manifest(site_dir: Path, **kwargs):
    """load_manifest, after the site's files were checked to be readable text."""
    from mmfed.data import manifest

    check_site_files(site_dir)
    return manifest.load_manifest(site_dir, **kwargs)
