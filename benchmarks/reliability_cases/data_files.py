"""Site data as exports produce it: encodings, broken and hostile files, half-copied folders.

Each case starts from a small valid site (reliability_cases.sites.site: images, audio, text, labels.txt)
and breaks one thing, as a hospital's export or copy would. Most run `mmfed data check site_a`; some run
`site init`, `task check` or `train`, which must refuse the same files before anything is trained or
written. The unreadable-file case needs a user that chmod can stop: run as root it is left out (root
reads a mode-000 file), with a note in the campaign's output, rather than faked.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from reliability import Case, Run, mmfed

from reliability_cases.sites import site

CHECK = ["data", "check", "site_a"]
TRAIN = ["train", "--site-dir", "site_a", "--epochs", "1", "--device", "cpu"]


# -- the manifest as rows ---------------------------------------------------------------------------
def _rows(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _text(header: list[str], rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _edit(work: Path, change: Callable[[list[dict[str, str]]], None], **site_options) -> Path:
    """A site whose manifest rows went through `change` (in place)."""
    root = site(work, **site_options)
    header, rows = _rows(root)
    change(rows)
    (root / "manifest.csv").write_text(_text(header, rows), encoding="utf-8")
    return root


def _cell(root: Path, column: str, row: int = 0) -> Path:
    return root / _rows(root)[1][row][column]


def _no_labels_txt(root: Path) -> Path:
    (root / "labels.txt").unlink()
    return root


# -- encodings and CSV dialects -----------------------------------------------------------------------
def _encoded(encoding: str, bom: bytes = b""):
    def setup(work: Path) -> list[str]:
        path = site(work) / "manifest.csv"
        path.write_bytes(bom + path.read_text(encoding="utf-8").encode(encoding))
        return CHECK

    return setup


def _note(text: str, encoding: str, row: int = 2):
    """A note holding `text`, the whole manifest then saved in `encoding` (Excel's 'CSV' on Windows)."""

    def setup(work: Path) -> list[str]:
        root = site(work)
        header, rows = _rows(root)
        rows[row]["text"] = text
        (root / "manifest.csv").write_bytes(_text(header, rows).encode(encoding))
        return CHECK

    return setup


def _labels_utf16(work: Path) -> list[str]:
    path = site(work) / "labels.txt"
    path.write_bytes(path.read_text().encode("utf-16"))
    return CHECK


def _mixed_line_endings(work: Path) -> list[str]:
    path = site(work) / "manifest.csv"
    lines = path.read_text().splitlines()
    ends = ["\r\n", "\n", "\r"]
    path.write_bytes("".join(line + ends[i % 3] for i, line in enumerate(lines)).encode())
    return CHECK


def _semicolons(work: Path) -> list[str]:
    path = site(work) / "manifest.csv"
    header, rows = _rows(path.parent)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, delimiter=";", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue())
    return CHECK


def _boms_in_header(work: Path) -> list[str]:
    path = site(work) / "manifest.csv"
    header, rest = path.read_text().split("\n", 1)
    names = header.split(",")
    names[2] = "\ufeff" + names[2]  # two exports pasted together: a second byte-order mark mid-header
    path.write_text("\ufeff\ufeff" + ",".join(names) + "\n" + rest, encoding="utf-8")
    return CHECK


def _write_manifest(data: bytes):
    def setup(work: Path) -> list[str]:
        (site(work) / "manifest.csv").write_bytes(data)
        return CHECK

    return setup


def _header_only(work: Path) -> list[str]:
    path = site(work) / "manifest.csv"
    path.write_text(path.read_text().split("\n", 1)[0] + "\n")
    return CHECK


def _duplicate_column(work: Path) -> list[str]:
    path = site(work) / "manifest.csv"
    lines = path.read_text().splitlines()
    first = lines[0].split(",")
    image = first.index("image")
    out = [lines[0] + ",image"] + [line + "," + next(csv.reader([line]))[image] for line in lines[1:]]
    path.write_text("\n".join(out) + "\n")
    return CHECK


def _excel_sep_line(work: Path) -> list[str]:
    path = site(work) / "manifest.csv"
    path.write_text("sep=,\n" + path.read_text())
    return CHECK


def _unclosed_quote(work: Path) -> list[str]:
    def change(rows):
        rows[3]["text"] = "cough"

    root = _edit(work, change)
    path = root / "manifest.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace(",cough,", ',"cough for 3 days,')  # row 4's note: its quote never closes
    path.write_text("\n".join(lines) + "\n")
    return CHECK


def _huge_cell(work: Path) -> list[str]:
    def change(rows):
        rows[1]["text"] = "pain " * 40_000  # 200,000 characters in one note

    _edit(work, change)
    return CHECK


def _nul_in_cell(work: Path) -> list[str]:
    def change(rows):
        rows[1]["text"] = "cough\0\0\0 fever"  # binary pasted from another program

    _edit(work, change)
    return CHECK


# -- labels -------------------------------------------------------------------------------------------
def _label(value: str, labels_txt: bool = False, row: int = 1, args: list[str] = CHECK):
    def setup(work: Path) -> list[str]:
        def change(rows):
            rows[row]["label"] = value

        root = _edit(work, change)
        if not labels_txt:
            _no_labels_txt(root)
        return args

    return setup


def _empty_like_cell(column: str, value: str):
    def setup(work: Path) -> list[str]:
        def change(rows):
            rows[2][column] = value

        _edit(work, change)
        return CHECK

    return setup


# -- where files are ----------------------------------------------------------------------------------
def _point_at(make: Callable[[Path, Path], str], column: str = "image"):
    """Row 2's `column` cell replaced by what make(work, site) returns (after it set the file up)."""

    def setup(work: Path) -> list[str]:
        root = site(work)
        cell = make(work, root)
        header, rows = _rows(root)
        rows[1][column] = cell
        (root / "manifest.csv").write_text(_text(header, rows))
        return CHECK

    return setup


def _outside(work: Path, root: Path) -> str:
    shutil.copy(_cell(root, "image"), work / "elsewhere.png")
    return "../elsewhere.png"


def _absolute(work: Path, root: Path) -> str:
    shutil.copy(_cell(root, "image"), work / "elsewhere.png")
    return str((work / "elsewhere.png").resolve())


def _windows_absolute(work: Path, root: Path) -> str:
    return "C:\\Export\\site_a\\image\\s0_1.png"


def _link_outside(work: Path, root: Path) -> str:
    shutil.copy(_cell(root, "image"), work / "elsewhere.png")
    (root / "image" / "linked.png").symlink_to(work / "elsewhere.png")
    return "image/linked.png"


def _link_inside(work: Path, root: Path) -> str:
    (root / "image" / "same.png").symlink_to(_cell(root, "image").name)
    return "image/same.png"


def _link_dangling(work: Path, root: Path) -> str:
    (root / "image" / "gone.png").symlink_to("not-there.png")
    return "image/gone.png"


def _link_loop(work: Path, root: Path) -> str:
    (root / "image" / "a.png").symlink_to("b.png")
    (root / "image" / "b.png").symlink_to("a.png")
    return "image/a.png"


def _directory(work: Path, root: Path) -> str:
    (root / "image" / "scan.png").mkdir()
    return "image/scan.png"


def _backslashes(work: Path, root: Path) -> str:
    return _rows(root)[1][1]["image"].replace("/", "\\")


def _wrong_case(work: Path, root: Path) -> str:
    return _rows(root)[1][1]["image"].upper()


def _half_copied(work: Path) -> list[str]:
    root = site(work)
    for cell in [r["audio"] for r in _rows(root)[1]][6:]:  # the copy stopped half-way through audio/
        (root / cell).unlink()
    return CHECK


def _manifest_directory(work: Path) -> list[str]:
    root = site(work)
    (root / "manifest.csv").unlink()
    (root / "manifest.csv").mkdir()
    return CHECK


def _labels_directory(work: Path) -> list[str]:
    root = site(work)
    (root / "labels.txt").unlink()
    (root / "labels.txt").mkdir()
    return CHECK


def _no_site(work: Path) -> list[str]:
    return ["data", "check", "site_b"]


def _site_is_a_file(work: Path) -> list[str]:
    site(work)
    return ["data", "check", "site_a/manifest.csv"]


def _unreadable(work: Path, args: list[str]) -> Run:
    """Mode 000 only while the command runs: the campaign's own snapshots must read the file."""
    path = _cell(work / "site_a", "image", 1)
    os.chmod(path, 0)
    try:
        return mmfed(work, args)
    finally:
        os.chmod(path, 0o644)


# -- broken and unusual files -------------------------------------------------------------------------
def _file(column: str, write: Callable[[Path], Path | None], row: int = 1, args: list[str] = CHECK, **kw):
    """Row `row`'s `column` file rewritten by write(path); a new path it returns goes in the cell."""

    def setup(work: Path) -> list[str]:
        root = site(work, **kw)
        path = _cell(root, column, row)
        new = write(path)
        if new is not None:
            header, rows = _rows(root)
            rows[row][column] = new.relative_to(root).as_posix()
            (root / "manifest.csv").write_text(_text(header, rows))
        return args

    return setup


def _truncate(keep: float):
    def write(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: max(1, int(len(data) * keep))])

    return write


def _keep_bytes(count: int):
    def write(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:count])

    return write


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _as_jpeg(mode: str = "L", truncate: bool = False, name: str = "scan.jpg"):
    def write(path: Path) -> Path:
        img = Image.open(path).convert(mode)
        new = path.with_name(name)
        img.resize((256, 256)).save(new, format="JPEG", quality=90)
        if truncate:
            data = new.read_bytes()
            new.write_bytes(data[: len(data) // 2])
        path.unlink()
        return new

    return write


def _bomb(path: Path) -> None:
    """A 49 KB PNG that decodes to 20000 x 20000 pixels (400 megapixels: 400 MB as grey, 1.2 GB as RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 20_000
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def _text_as_png(path: Path) -> None:
    path.write_text("Patient list - see attached\n")


def _png(mode: str, make: Callable[[np.ndarray], Image.Image]):
    def write(path: Path) -> None:
        pixels = np.asarray(Image.open(path).convert("L"))
        make(pixels).save(path)

    return write


def _sixteen_bit(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint16) * 257)  # 16 bits a pixel: mode I;16


def _palette_transparent(pixels: np.ndarray) -> Image.Image:
    img = Image.fromarray(pixels).convert("P")
    img.info["transparency"] = 0
    return img


def _rgba(pixels: np.ndarray) -> Image.Image:
    rgba = np.stack([pixels, pixels, pixels, np.where(pixels > 60, 255, 0).astype(np.uint8)], axis=-1)
    return Image.fromarray(rgba, mode="RGBA")


def _wav(seconds: float, rate: int = 8000, subtype: str = "PCM_16", fmt: str | None = None):
    def write(path: Path) -> None:
        import soundfile

        frames = int(seconds * rate)
        signal = (0.1 * np.sin(np.arange(frames) / 7)).astype(np.float32)
        soundfile.write(str(path), signal, rate, subtype=subtype, format=fmt)

    return write


def _mp3_named_wav(path: Path) -> None:
    _wav(1.0, fmt="MP3", subtype="MPEG_LAYER_III")(path)


def _garble(start: float, end: float):
    """Bytes start..end (fractions of the file) scrambled: a bad sector, a broken transfer."""

    def write(path: Path) -> None:
        data = bytearray(path.read_bytes())
        for i in range(int(len(data) * start), int(len(data) * end)):
            data[i] = (data[i] * 31 + 7) % 256
        path.write_bytes(bytes(data))

    return write


def _still_as_video(path: Path) -> Path:
    new = path.with_name("still.jpg")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(new)
    return new


def _audio_as_video(path: Path) -> Path:
    new = path.with_name("sound.mp4")
    _wav(1.0)(path.with_name("sound.wav"))
    (path.with_name("sound.wav")).rename(new)
    return new


# -- the site's own limits: site.toml [data] ------------------------------------------------------------
def _site_toml(text: str, args: list[str] = CHECK, **kw):
    def setup(work: Path) -> list[str]:
        (site(work, **kw) / "site.toml").write_text(text)
        return args

    return setup


# -- other commands -------------------------------------------------------------------------------------
def _task_check(break_site: Callable[[Path], object]):
    def setup(work: Path) -> list[str]:
        from mmfed.data.task_sites import draft_task

        root = site(work)
        task, _ = draft_task(root, "site_a")
        (work / "task.toml").write_text(task.to_toml())
        break_site(root)
        return ["task", "check", "task.toml", "site_a"]

    return setup


def _site_init(break_site: Callable[[Path], object]):
    def setup(work: Path) -> list[str]:
        break_site(site(work))
        return ["site", "init", "--dir", "site_a"]

    return setup


def _nothing_written(*names: str):
    """A run that must also leave no `names` behind (site init refusing a site writes no policy or key)."""

    def run(work: Path, args: list[str]) -> Run:
        done = mmfed(work, args)
        left = [n for n in names if (work / n).exists()]
        if left:
            return Run(3, done.output + f"\n[the refused command still wrote {left}]", done.seconds)
        return done

    return run


_MEASURED = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(f'[peak memory {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MB]', "
    "file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _within_memory(megabytes: int):
    """The command as the user runs it, its peak memory measured: over `megabytes`, the case fails (exit 3),
    whatever the command printed. A decompression bomb must be refused before it is decoded."""

    def run(work: Path, args: list[str]) -> Run:
        exe = shutil.which("mmfed", path=str(Path(sys.executable).parent)) or "mmfed"
        env = {**os.environ, "HOME": str(work / "home"), "MMFED_CACHE_DIR": str(work / "cache")}
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _MEASURED, exe, *args],
            cwd=work,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        output = done.stdout + done.stderr
        peak = int(output.rsplit("[peak memory ", 1)[1].split(" ", 1)[0]) if "[peak memory " in output else 0
        code = 3 if peak > megabytes else done.returncode
        return Run(code, output, time.perf_counter() - start)

    return run


CASES = [
    # encodings and CSV dialects
    Case("UTF-16 manifest (Excel 'Unicode text')", _encoded("utf-16"), wants="UTF-16"),
    Case("UTF-16 LE manifest without a byte-order mark", _encoded("utf-16-le"), wants="UTF-16"),
    Case("UTF-16 BE manifest with a byte-order mark", _encoded("utf-16-be", b"\xfe\xff"), wants="UTF-16"),
    Case(
        "latin-1 accents in a note (Excel 'CSV' on Windows)",
        _note("Fieber 39°C, Rückenschmerzen", "latin-1"),
        wants="line 4",
    ),
    Case(
        "cp1252 curly quotes and € in a note",
        _note("“fever” since Monday, €40 copay", "cp1252"),
        wants="Windows-1252",
    ),
    Case(
        "latin-1 clinical note over several lines",
        _note("Cough\nfièvre\nséjour", "latin-1", row=1),
        wants="line 4",
    ),
    Case("labels.txt saved as UTF-16", _labels_utf16, wants="labels.txt"),
    Case("mixed line endings (CRLF, LF, CR)", _mixed_line_endings, expect="ok"),
    Case("';'-separated manifest (European Excel)", _semicolons, wants="';'"),
    Case("byte-order marks before and inside the header", _boms_in_header, expect="ok"),
    Case("Excel's 'sep=,' first line", _excel_sep_line, wants="sep="),
    Case("empty manifest (0 bytes)", _write_manifest(b""), wants="manifest.csv"),
    Case("manifest of one blank line", _write_manifest(b"\r\n"), wants="manifest.csv"),
    Case("header only, no rows", _header_only, wants="no samples"),
    Case("duplicate column in the header", _duplicate_column, wants="appears twice"),
    Case("a quote never closed swallows the rows after it", _unclosed_quote, wants="line 5"),
    Case("a 200,000-character text cell", _huge_cell, wants="longer than"),
    Case("NUL bytes in a text cell", _nul_in_cell, wants="NUL"),
    # labels
    Case("'nan' label (pandas astype(str)), no labels.txt", _label("nan"), wants="row 2"),
    Case("'NaN' label, no labels.txt", _label("NaN", row=4), wants="row 5"),
    Case("'#N/A' label (Excel lookup failed)", _label("#N/A"), wants="#N/A"),
    Case("'None' label (Python export)", _label("None"), wants="'None'"),
    Case("'nan' label with labels.txt 0, 1", _label("nan", labels_txt=True), wants="row 2"),
    Case("whitespace-only label", _label("   "), wants="empty label"),
    Case("non-breaking-space label", _label("\u00a0"), wants="empty label"),
    Case("'nan' text cell", _empty_like_cell("text", "nan"), wants="column 'text'"),
    Case("'nan' in the image column", _empty_like_cell("image", "nan"), wants="empty cell"),
    # where files are
    Case("path pointing outside the site", _point_at(_outside), wants="outside the site"),
    Case("absolute path", _point_at(_absolute), wants="absolute"),
    Case("absolute Windows path (C:\\...)", _point_at(_windows_absolute), wants="Windows path"),
    Case("Windows backslashes between folders", _point_at(_backslashes), expect="ok"),
    Case("path in the wrong letter case (written on Windows)", _point_at(_wrong_case), wants="letter case"),
    Case("symlink to a file outside the site", _point_at(_link_outside), wants="outside the site"),
    Case("symlink to a file inside the site", _point_at(_link_inside), expect="ok"),
    Case("dangling symlink", _point_at(_link_dangling), wants="symbolic link"),
    Case("symlink loop", _point_at(_link_loop), wants="loops"),
    Case("a directory where a file is named", _point_at(_directory), wants="directory"),
    Case("half-copied folder: half the audio missing", _half_copied, wants="copied completely"),
    Case("manifest.csv is a directory", _manifest_directory, wants="directory"),
    Case("labels.txt is a directory", _labels_directory, wants="directory"),
    Case("site directory does not exist", _no_site, wants="does not exist"),
    Case("site directory named is a file", _site_is_a_file, wants="is a file"),
    # broken and unusual images
    Case("zero-byte image", _file("image", _empty), wants="empty"),
    Case("truncated PNG", _file("image", _truncate(0.6)), wants="truncated"),
    Case("PNG cut to its first 60 bytes", _file("image", _truncate(0.1)), wants=".png"),
    Case("truncated JPEG", _file("image", _as_jpeg(truncate=True)), wants="truncated"),
    Case(
        "decompression-bomb PNG (49 KB, 20000x20000)",
        _file("image", _bomb),
        wants="pixels",
        run=_within_memory(400),
    ),
    Case(
        "JPEG named .png (wrong extension: read by content)",
        _file("image", _as_jpeg(name="x.png")),
        expect="ok",
    ),
    Case("text file renamed .png", _file("image", _text_as_png), wants="not an image"),
    Case("CMYK JPEG (print export)", _file("image", _as_jpeg("CMYK")), expect="ok"),
    Case("16-bit greyscale PNG (X-ray detector)", _file("image", _png("I;16", _sixteen_bit)), expect="ok"),
    Case("palette PNG with transparency", _file("image", _png("P", _palette_transparent)), expect="ok"),
    Case("RGBA PNG", _file("image", _png("RGBA", _rgba)), expect="ok"),
    # broken and unusual audio
    Case("truncated WAV", _file("audio", _truncate(0.5)), wants="truncated"),
    Case("WAV cut inside its header", _file("audio", _keep_bytes(30)), wants="not a readable audio"),
    Case("WAV of 0 frames", _file("audio", _wav(0.0)), wants="no audio samples"),
    Case(
        "2-hour WAV (over max_audio_seconds)",
        _file("audio", _wav(7200.0, rate=1000, subtype="PCM_U8")),
        wants="max_audio_seconds",
    ),
    Case("MP3 named .wav (read by content)", _file("audio", _mp3_named_wav), expect="ok"),
    Case(
        "image in the audio column",
        _point_at(lambda w, r: _rows(r)[1][1]["image"], "audio"),
        wants="not a readable audio",
    ),
    # broken video
    Case(
        "corrupt video: its index garbled",
        _file("video", _garble(0.3, 0.6), modalities="video,text"),
        wants="not a readable video",
    ),
    Case(
        "corrupt video: its frames garbled",
        _file("video", _garble(0.1, 0.3), modalities="video,text"),
        wants="cannot be decoded",
    ),
    Case("truncated video", _file("video", _truncate(0.5), modalities="video,text"), wants=".mp4"),
    Case(
        "still image in the video column",
        _file("video", _still_as_video, modalities="video,text"),
        wants="still image",
    ),
    Case(
        "audio in the video column",
        _file("video", _audio_as_video, modalities="video,text"),
        wants="no video stream",
    ),
    # the site's limits
    Case(
        "site.toml [data]: misspelt key",
        _site_toml("[data]\nmax_image_pixel = 1000\n"),
        wants="data.max_image_pixel",
    ),
    Case(
        "site.toml [data]: negative limit",
        _site_toml("[data]\nmax_audio_seconds = -1\n"),
        wants="data.max_audio_seconds",
    ),
    Case(
        "site.toml [data]: a limit in quotes",
        _site_toml('[data]\nmax_file_mb = "500"\n'),
        wants="data.max_file_mb",
    ),
    Case("site.toml [data]: misspelt table [dta]", _site_toml("[dta]\nmax_file_mb = 5\n"), wants="[data]"),
    Case(
        "site.toml [data]: images over the site's max_image_pixels",
        _site_toml("[data]\nmax_image_pixels = 500\n"),
        wants="max_image_pixels",
    ),
    Case(
        "site.toml [data]: audio over the site's max_audio_seconds",
        _site_toml("[data]\nmax_audio_seconds = 0.25\n"),
        wants="max_audio_seconds",
    ),
    Case(
        "site.toml [data]: video over the site's max_video_seconds",
        _site_toml("[data]\nmax_video_seconds = 0.5\n", modalities="video,text"),
        wants="max_video_seconds",
    ),
    Case(
        "site.toml [data]: files over the site's max_file_mb",
        _site_toml("[data]\nmax_file_mb = 0.0001\n"),
        wants="max_file_mb",
    ),
    Case(
        "site.toml [data]: raised limits are accepted",
        _site_toml(
            "[privacy]\nmax_epsilon = 8.0\n\n[data]\nmax_image_pixels = 200_000_000\nmax_audio_seconds = 3600\n",
            args=["site", "init", "--dir", "site_a"],
        ),
        expect="ok",
    ),
    # other commands refuse the same files
    Case(
        "task check: truncated WAV",
        _task_check(lambda r: _truncate(0.5)(_cell(r, "audio", 2))),
        wants="truncated",
    ),
    Case(
        "site init: truncated PNG (nothing written)",
        _site_init(lambda r: _truncate(0.6)(_cell(r, "image", 3))),
        wants="truncated",
        run=_nothing_written("site_a/site.toml"),
    ),
    Case(
        "train: truncated PNG, refused before training",
        _file("image", _truncate(0.6), args=TRAIN),
        wants="truncated",
    ),
    Case("train: 'nan' label, no labels.txt", _label("nan", args=TRAIN), wants="row 2"),
    Case(
        "train: decompression-bomb PNG",
        _file("image", _bomb, args=TRAIN),
        wants="pixels",
        run=_within_memory(1200),
    ),
    Case(
        "train: 2-hour WAV",
        _file("audio", _wav(7200.0, rate=1000, subtype="PCM_U8"), args=TRAIN),
        wants="max_audio_seconds",
    ),
    Case(
        "train: image over the site's site.toml limit",
        _site_toml("[data]\nmax_image_pixels = 500\n", args=TRAIN),
        wants="max_image_pixels",
    ),
]

if os.geteuid() != 0:  # root reads a mode-000 file: the case would test nothing
    CASES.append(
        Case(
            "unreadable image (chmod 000)", lambda w: (site(w), CHECK)[1], run=_unreadable, wants="permission"
        )
    )
else:
    print("  data_files: 'unreadable image (chmod 000)' left out: running as root, chmod stops no read")
