"""Site data files decoded in full, within the site's limits (site.toml [data]), at check and at training:
the bugs the reliability campaign's data_files cases found, one test each."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmfed.data.audio import load_waveform
from mmfed.data.image import ImageProcessor, load_image
from mmfed.data.limits import DEFAULT, DataLimits, limits_for, parse_limits, site_limits
from mmfed.data.manifest import load_manifest, write_manifest
from mmfed.data.site_files import check_site_files
from mmfed.data.video import decode_sampled_frames
from mmfed.errors import ConfigError, DataError, ManifestError, MMFedError


def _png(path: Path, size: int = 8, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(size * size).reshape(size, size) % 256).astype(np.uint8)).convert(mode).save(
        path
    )
    return path


def _wav(path: Path, seconds: float, rate: int = 8000, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(
        str(path), (0.1 * np.sin(np.arange(int(seconds * rate)) / 5)).astype(np.float32), rate, **kw
    )
    return path


def _bomb(path: Path, side: int = 20_000) -> Path:
    """A ~50 KB PNG whose header says side x side (1-bit): 400 megapixels at the default side."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(b"\0" * (1 + side // 8)) for _ in range(side)) + packer.flush()
    head = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _site(
    root: Path, rows: list[dict], labels: list[str] | None = ("a", "b"), toml: str | None = None
) -> Path:
    """A site of the given rows (plus two plain text-only rows, so two labels exist)."""
    plain = [{"id": f"t{i}", "label": lab, "split": "train", "text": "note"} for i, lab in enumerate("ab")]
    write_manifest(root, rows + plain, labels=list(labels) if labels else None)
    if toml is not None:
        (root / "site.toml").write_text(toml)
    return root


def _problems(site: Path, **kw) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(site, **kw)
    return str(info.value)


def _row(**cells) -> dict:
    return {"id": "p1", "label": "a", "split": "train", **cells}


# -- images ---------------------------------------------------------------------------------------------
def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import ImageFile

    bomb = _bomb(tmp_path / "image" / "bomb.png")
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the bomb was decoded"))
    message = _problems(_site(tmp_path, [_row(image="image/bomb.png")]))
    assert "row 1" in message and "image/bomb.png" in message and "400,000,000 pixels" in message
    assert "max_image_pixels" in message
    with pytest.raises(DataError, match="bomb.png.*max_image_pixels"):
        load_image(bomb, 1)


def test_image_just_over_the_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    big = _png(tmp_path / "image" / "big.png", size=40)  # 1,600 pixels: under PIL's own 2x guard
    _site(tmp_path, [_row(image="image/big.png")], toml="[data]\nmax_image_pixels = 1000\n")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(DataError, match=r"40x40 = 1,600 pixels.*max_image_pixels = 1_000, set in"):
        load_image(big, 1)


@pytest.mark.parametrize("fmt, keep", [("PNG", 0.6), ("JPEG", 0.5), ("PNG", 0.05)])
def test_truncated_image_is_refused_at_check(tmp_path, fmt, keep):
    path = tmp_path / "image" / f"x.{fmt.lower()}"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        path, format=fmt
    )
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    message = _problems(_site(tmp_path, [_row(image=f"image/{path.name}")]))
    assert f"image/{path.name}" in message and ("truncated" in message or "not an image" in message)


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_unusual_image_modes_are_accepted_and_converted(tmp_path, mode):
    path = tmp_path / "image" / ("x.jpg" if mode == "CMYK" else "x.png")
    path.parent.mkdir()
    grey = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    img = (
        Image.fromarray(grey.astype(np.uint16) * 257)
        if mode == "I;16"
        else Image.fromarray(grey).convert(mode)
    )
    img.save(path)
    assert (
        load_manifest(_site(tmp_path, [_row(image=f"image/{path.name}")])).samples[0].image == path.resolve()
    )
    assert load_image(path, 3).mode == "RGB" and load_image(path, 1).size == (32, 32)


def test_a_text_file_named_png_and_a_png_named_jpg(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "list.png").write_text("patients, see attached\n")
    _png(tmp_path / "image" / "scan.jpg")  # by content: a PNG (the public chest X-ray set has these)
    site = _site(tmp_path, [_row(image="image/list.png"), _row(id="p2", image="image/scan.jpg")])
    message = _problems(site)
    assert "image/list.png' is not an image" in message and "scan.jpg" not in message


# -- audio ----------------------------------------------------------------------------------------------
def test_over_long_audio_is_refused_at_check_and_when_loaded(tmp_path):
    long = _wav(tmp_path / "audio" / "long.wav", 2.0)
    site = _site(tmp_path, [_row(audio="audio/long.wav")], toml="[data]\nmax_audio_seconds = 1.5\n")
    message = _problems(site)
    assert "audio/long.wav' is 2 s long" in message and "max_audio_seconds = 1.5, set in" in message
    with pytest.raises(DataError, match="long.wav.*max_audio_seconds"):
        load_waveform(long, 8000)  # training reads the same site.toml
    assert load_waveform(long, 8000, DataLimits(max_audio_seconds=3)).shape == (16000,)


def test_audio_header_that_lies_about_its_length_is_caught_while_decoding(tmp_path):
    from mmfed.data.decoding import FileProblem, verify_audio

    path = _wav(tmp_path / "a.wav", 3.0, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # 'size unknown' (a streamed recording): read to the end
    path.write_bytes(bytes(data))
    with pytest.raises(FileProblem, match="over the limit"):
        verify_audio(path, DataLimits(max_audio_seconds=2))


def test_truncated_empty_and_zero_frame_wavs(tmp_path):
    cut = _wav(tmp_path / "audio" / "cut.wav", 1.0, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:9000])
    _wav(tmp_path / "audio" / "zero.wav", 0.0, subtype="PCM_16")
    (tmp_path / "audio" / "empty.wav").write_bytes(b"")
    rows = [_row(id=f"p{i}", audio=f"audio/{n}.wav") for i, n in enumerate(["cut", "zero", "empty"])]
    message = _problems(_site(tmp_path, rows))
    assert "cut.wav' is truncated (7,044 bytes of audio missing)" in message
    assert "zero.wav' holds no audio samples" in message and "empty.wav' is empty" in message
    with pytest.raises(DataError, match="cut.wav.*truncated"):
        load_waveform(cut, 8000)


def test_mp3_named_wav_is_read_by_content(tmp_path):
    _wav(tmp_path / "audio" / "a.wav", 1.0, format="MP3", subtype="MPEG_LAYER_III")
    assert load_manifest(_site(tmp_path, [_row(audio="audio/a.wav")])).samples[0].audio is not None


# -- video ----------------------------------------------------------------------------------------------
@pytest.fixture
def clip(tmp_path) -> Path:
    from mmfed.data.scenarios.synthetic import _video, _write_video

    path = tmp_path / "video" / "c.mp4"
    path.parent.mkdir()
    _write_video(path, _video(1, 2, np.random.default_rng(0)))  # 8 frames at 8 fps: 1 s
    return path


def test_video_over_the_sites_duration_limit(tmp_path, clip):
    site = _site(tmp_path, [_row(video="video/c.mp4")], toml="[data]\nmax_video_seconds = 0.5\n")
    assert "video/c.mp4' is 1 s long" in _problems(site)
    with pytest.raises(DataError, match="c.mp4.*max_video_seconds"):
        decode_sampled_frames(clip, 4, 3)
    assert decode_sampled_frames(clip, 4, 3, DEFAULT).shape == (4, 32, 32, 3)


def test_video_with_damaged_frames_is_refused_at_check(tmp_path, clip):
    data = bytearray(clip.read_bytes())
    for i in range(int(len(data) * 0.1), int(len(data) * 0.3)):
        data[i] = (data[i] * 31 + 7) % 256  # the frames, not the index: decoders would conceal it
    clip.write_bytes(bytes(data))
    assert "video/c.mp4' cannot be decoded" in _problems(_site(tmp_path, [_row(video="video/c.mp4")]))


# -- labels and cells -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "#N/A", "None", "NULL", "n/a"])
def test_empty_cell_words_are_no_label(tmp_path, value):
    _png(tmp_path / "image" / "x.png")
    rows = [_row(image="image/x.png", label=value)]
    message = _problems(_site(tmp_path, rows, labels=None))
    assert f"row 1 (id 'p1'), line 2, column 'label': label {value!r} is what Excel or pandas" in message


def test_a_label_named_none_is_a_class_when_labels_txt_lists_it(tmp_path):
    _png(tmp_path / "image" / "x.png")
    manifest = load_manifest(
        _site(tmp_path, [_row(image="image/x.png", label="None")], labels=["None", "a", "b"])
    )
    assert manifest.labels == ["None", "a", "b"] and manifest.samples[0].label == 0


def test_nan_label_refused_by_train_path_too(tmp_path):
    """mmfed train reads site dirs through from_site_dirs, whose labels come from the rows: 'nan' is none."""
    from mmfed.data.scenarios import from_site_dirs

    site = _site(tmp_path / "s", [_row(text="x", label="nan")], labels=None)
    scenario = from_site_dirs([site])
    assert scenario.labels == ["a", "b"]
    with pytest.raises(ManifestError, match="label 'nan' is what Excel or pandas"):
        scenario.load_sites()


def test_nan_text_and_file_cells(tmp_path):
    site = _site(tmp_path, [_row(text="nan"), _row(id="p2", image="#N/A", text="x")])
    message = _problems(site)
    assert (
        "column 'text': 'nan' is what Excel" in message and "column 'image': '#N/A' is what Excel" in message
    )


# -- where files are ----------------------------------------------------------------------------------------
def test_windows_paths_case_and_link_loops(tmp_path):
    _png(tmp_path / "image" / "scan.png")
    (tmp_path / "image" / "a.png").symlink_to("b.png")
    (tmp_path / "image" / "b.png").symlink_to("a.png")
    rows = [
        _row(image="image\\scan.png"),  # written on Windows: accepted
        _row(id="p2", image="Image/Scan.PNG"),
        _row(id="p3", image="image/a.png"),
        _row(id="p4", image="D:\\export\\scan.png"),
    ]
    message = _problems(_site(tmp_path, rows))
    assert "row 1 " not in message
    assert "but 'image/scan.png' is (letter case matters here)" in message
    assert "symbolic link that loops" in message and "absolute Windows path" in message


# -- the site's own files -----------------------------------------------------------------------------------
def test_unclosed_quote_is_refused_naming_its_line(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        'id,label,split,text\np1,a,train,ok\np2,b,train,"cough\np3,a,train,x\n'
    )
    with pytest.raises(MMFedError, match=r"line 3: a quoted cell starting on this row is never closed"):
        check_site_files(tmp_path)
    with pytest.raises(ManifestError):
        load_manifest(tmp_path)  # not three rows of which one note holds the others


def test_byte_order_marks_in_the_header_are_ignored(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "\ufeff\ufeffid,label,\ufeffsplit,text\np1,a,train,x\np2,b,test,y\n"
    )
    check_site_files(tmp_path)
    assert len(load_manifest(tmp_path).samples) == 2


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "is empty"),
        ("sep=,\nid,label,split,text\n", "separator hint"),
        ("id,label,split,text\np1,a,train,Fi\xe8vre\n", "line 2: not UTF-8 text; it looks like Windows-1252"),
    ],
)
def test_manifest_exports_refused_with_what_to_do(tmp_path, text, needle):
    (tmp_path / "manifest.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(MMFedError, match=needle):
        check_site_files(tmp_path)


def test_a_directory_where_a_site_file_should_be(tmp_path):
    (tmp_path / "manifest.csv").mkdir()
    with pytest.raises(MMFedError, match="manifest.csv: is a directory"):
        check_site_files(tmp_path)
    assert "is a directory" in _problems(tmp_path)


# -- the limits and site.toml ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "table, needle",
    [
        ({"max_image_pixel": 5}, "data.max_image_pixel': unknown key; did you mean 'max_image_pixels'?"),
        ({"max_audio_seconds": -1}, "data.max_audio_seconds': must be a finite number > 0"),
        ({"max_video_seconds": float("nan")}, "data.max_video_seconds': must be a finite number > 0"),
        ({"max_file_mb": "500"}, "data.max_file_mb': must be a number"),
        ({"max_file_mb": True}, "data.max_file_mb': must be a number"),
        ({"max_image_pixels": 1.5e6}, "data.max_image_pixels': must be a whole number"),
    ],
)
def test_bad_data_keys_are_named(table, needle):
    with pytest.raises(ConfigError, match="site.toml: " + needle.replace("?", r"\?").replace("(", r"\(")):
        parse_limits(table, "site.toml")


def test_limits_from_site_toml_defaults_and_changes(tmp_path):
    assert site_limits(tmp_path) is DEFAULT  # no site.toml
    (tmp_path / "site.toml").write_text("[privacy]\nmax_epsilon = 8.0\n")
    assert site_limits(tmp_path) is DEFAULT  # no [data] table
    (tmp_path / "site.toml").write_text("[privacy]\nmax_epsilon = 8.0\n\n[data]\nmax_file_mb = 2\n")
    limits = site_limits(tmp_path)
    assert (limits.max_file_mb, limits.max_audio_seconds, limits.given) == (2.0, 600.0, ("max_file_mb",))
    (tmp_path / "site.toml").write_text("[privacy]\nmax_epsilon = 8.0\n\n[data]\nmax_file_mb = 3\n")
    assert site_limits(tmp_path).max_file_mb == 3.0  # edited: read again
    (tmp_path / "site.toml").write_text("[dta]\nmax_file_mb = 3\n")
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['dta'\]; did you mean \[data\]"):
        site_limits(tmp_path)


def test_load_policy_accepts_and_checks_the_data_table(tmp_path):
    from mmfed.privacy.policy import SitePolicy, load_policy

    path = tmp_path / "site.toml"
    path.write_text(SitePolicy().template() + "max_video_seconds = 30\n")  # the template ends in [data]
    assert load_policy(path).max_epsilon == 8.0 and site_limits(tmp_path).max_video_seconds == 30.0
    path.write_text("[privacy]\nmax_epsilon = 8.0\n\n[data]\nmax_audio_second = 30\n")
    with pytest.raises(ConfigError, match="data.max_audio_second': unknown key"):
        load_policy(path)


def test_training_loaders_enforce_the_sites_limits(tmp_path):
    """A file that slipped past the check (or was replaced since) still cannot exceed the site's limits."""
    from mmfed.config import ImageSpec

    image = _png(tmp_path / "image" / "x.png", size=16)
    _site(tmp_path, [_row(image="image/x.png")])
    assert ImageProcessor(ImageSpec())(image).shape == (1, 28, 28)
    (tmp_path / "site.toml").write_text("[data]\nmax_file_mb = 0.00001\n")
    assert limits_for(image).max_file_mb == 0.00001
    with pytest.raises(DataError, match=r"x.png: is .* MiB, over the limit \(data.max_file_mb"):
        ImageProcessor(ImageSpec())(image)
