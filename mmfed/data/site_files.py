"""A site directory's own files (manifest.csv, labels.txt, site.toml) read as text first, so that an
undecodable or unparsable one is reported with its file and line: the csv and codec errors name neither
(and hold the text around the bad byte, which may be a record)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mmfed.data.limits import site_limits
from mmfed.errors import MMFedError

SITE_FILES = ("manifest.csv", "labels.txt", "site.toml")


def check_site_files(site_dir: Path) -> None:
    """Undecodable or unparsable manifest.csv, labels.txt, site.toml (and its [data] limits), or a folder
    where one of them should be -> a message naming the file and line. A missing file is left to
    load_manifest, which says what is missing."""
    for name in SITE_FILES:
        path = Path(site_dir) / name
        if path.is_dir():
            raise MMFedError(
                f"{path}: is a directory; a site's {name} is a file: remove the folder or rename it"
            )
        if path.is_file():
            text = _utf8_text(path)
            if name == "manifest.csv":
                _check_csv(path, text)
    site_limits(site_dir)  # site.toml: valid TOML, known tables, every [data] key


def _utf8_text(path: Path) -> str:
    data = path.read_bytes()
    excel = " (Excel: CSV UTF-8)" if path.suffix == ".csv" else ""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MMFedError(
            f"{path}, line {line}: not UTF-8 text; {_guess(data)}save it as UTF-8{excel}"
        ) from None
    if "\0" in text:  # UTF-16 without a byte-order mark decodes, as text full of NULs
        line = text.count("\n", 0, text.index("\0")) + 1
        why = "UTF-16 without a byte-order mark, or binary data pasted into a cell?"
        raise MMFedError(f"{path}, line {line}: holds NUL bytes ({why}); save it as UTF-8{excel}")
    return text


def _guess(data: bytes) -> str:
    """What an undecodable site file most likely is, for the message."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "it is UTF-16; "
    if all(b >= 0x20 or b in b"\t\r\n" for b in data[:4096]):
        return "it looks like Windows-1252 / Latin-1 (accents, curly quotes); "
    return ""


def _check_csv(path: Path, text: str) -> None:
    if not text.strip("\ufeff \t\r\n"):
        raise MMFedError(f"{path}: is empty (no header, no rows); export it again, header id,label,split,...")
    if text.lstrip("\ufeff").lower().startswith("sep="):
        raise MMFedError(
            f"{path}, line 1: 'sep=' is Excel's separator hint, not the header; delete that line"
        )
    # strict: a quote never closed would otherwise swallow every row after it into one cell, silently
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    last = 0  # the line the last whole row ended on
    try:
        for _ in reader:
            last = reader.line_num
    except csv.Error as exc:
        if "field limit" in str(exc):
            line, problem = (
                reader.line_num,
                f"a cell is longer than {csv.field_size_limit()} characters; shorten it",
            )
        elif "unexpected end of data" in str(exc):
            line = last + 1
            problem = (
                "a quoted cell starting on this row is never closed, so every row after it would be read "
                'as its text; close the quote (write "" for a quote inside a quoted cell)'
            )
        else:
            line, problem = reader.line_num, f"not readable as CSV ({exc}); check the quotes on that line"
        raise MMFedError(f"{path}, line {line}: {problem}") from None


def load_site_manifest(site_dir: Path, **kwargs):
    """load_manifest, after the site's files were checked to be readable text."""
    from mmfed.data import manifest

    check_site_files(site_dir)
    return manifest.load_manifest(site_dir, **kwargs)
