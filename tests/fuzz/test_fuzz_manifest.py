"""Fuzzed manifest.csv / labels.txt (mmfed.data.manifest): whatever a site's files hold, load_manifest
returns a SiteManifest whose every sample obeys the documented rules, or raises an MMFedError naming
the file — never another exception, never a sample that breaks a rule."""

from __future__ import annotations

import csv
import io
import os
import wave
from pathlib import Path

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from mmfed.config import MODALITIES
from mmfed.data.manifest import (
    FILE_MODALITIES,
    LABELS_NAME,
    MANIFEST_NAME,
    SPLITS,
    SiteManifest,
    load_manifest,
    read_labels,
)
from mmfed.errors import MMFedError
from mmfed.task import Columns


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (8, 8), 128).save(out, format="PNG")
    return out.getvalue()


PNG = _png()
HEADER = "id,label,split,image,audio,text,video,tabular"
MAPPED = Columns(
    id="patient_id", label="finding", split="fold", image="xray", audio="cough", text="note",
    tabular=("age", "sex"),
)  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site with one good file of each cheap kind and the usual traps (empty, fake, outside, links)."""
    root = tmp_path_factory.mktemp("fuzz-manifest")
    site = root / "site"
    (site / "images").mkdir(parents=True)
    (site / "audio").mkdir()
    (site / "images" / "a.png").write_bytes(PNG)
    (site / "images" / "empty.png").write_bytes(b"")
    (site / "images" / "fake.png").write_bytes(b"name,dob\nJane Doe,1970-01-01\n")
    with wave.open(str(site / "audio" / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(range(256)) * 16)
    (root / "outside.png").write_bytes(PNG)
    os.symlink(root / "outside.png", site / "images" / "link.png")
    os.symlink(site / "images", site / "images" / "loop")
    return site


def _run(site: Path, manifest: bytes, labels_file: bytes | None, **kwargs):
    """Write the site's files, load them; return the manifest or the MMFedError."""
    (site / MANIFEST_NAME).write_bytes(manifest)
    labels_path = site / LABELS_NAME
    labels_path.unlink(missing_ok=True)
    if labels_file is not None:
        labels_path.write_bytes(labels_file)
    report = site.parent / "report" / "skipped.csv"
    try:
        result = load_manifest(site, report_path=report, **kwargs)
    except MMFedError as exc:
        assert str(site) in str(exc), f"the error does not name the site's file: {exc}"
        event("refused")
        return exc
    event("accepted, with skipped rows" if result.skipped else "accepted")
    return result


def _obeys_the_rules(site: Path, result, labels: list[str] | None, labels_file: bytes | None) -> None:
    if isinstance(result, MMFedError):
        return
    assert isinstance(result, SiteManifest)
    assert len(result.labels) >= 2 and len(set(result.labels)) == len(result.labels)
    assert all(isinstance(x, str) and x for x in result.labels)
    if labels is not None:
        assert result.labels == labels
    elif labels_file is not None:
        assert result.labels == read_labels(site)
    assert result.samples, "a manifest without samples was accepted"
    ids = [s.id for s in result.samples]
    assert len(set(ids)) == len(ids) and all(ids), f"ids not unique and non-empty: {ids}"
    inside = site.resolve()
    for s in result.samples:
        assert s.split in SPLITS
        assert isinstance(s.label, int) and 0 <= s.label < len(result.labels)
        assert s.modalities, f"sample {s.id!r} has no modality"
        assert set(s.modalities) <= set(MODALITIES)
        for modality in FILE_MODALITIES:
            path = getattr(s, modality)
            if path is not None:
                assert path.resolve().is_relative_to(inside), f"{path} is outside the site directory"
                assert path.is_file() and path.stat().st_size > 0
        assert s.text is None or s.text.strip()


# -- arbitrary bytes ------------------------------------------------------------------------------------


@given(manifest=st.binary(max_size=2000), labels_file=st.none() | st.binary(max_size=200))
@example(manifest=b"id,label,split,image\n\xff\xfe,normal,train,images/a.png\n", labels_file=None)
@example(manifest=HEADER.encode("utf-16"), labels_file=None)
@example(manifest=b"id,label,split,text\np1,a,train,x\n", labels_file=b"a\nb\n\x80\n")
def test_arbitrary_bytes(site, manifest, labels_file):
    result = _run(site, manifest, labels_file)
    _obeys_the_rules(site, result, None, labels_file)
    try:
        labels = read_labels(site)
    except MMFedError as exc:
        assert str(site / LABELS_NAME) in str(exc)
        return
    if labels_file is None:
        assert labels is None
    else:
        assert len(labels) >= 2 and len(set(labels)) == len(labels)
        assert all(x and x == x.strip() for x in labels)


# -- arbitrary CSV text ---------------------------------------------------------------------------------

HEADER_NAMES = [
    *HEADER.split(","), "ID", " label ", "Split", "labels", "imge", "img", "ward", "", "id;label;split",
    *MAPPED.header_names(), "\ufeffid", "text\0",
]  # fmt: skip
PATHS = [
    "images/a.png", "./images/a.png", "images//a.png", "audio/a.wav", "images", "images/empty.png",
    "images/fake.png", "images/link.png", "images/loop/a.png", "images/loop/../a.png", "../outside.png",
    "images/../../outside.png", "/etc/hostname", "missing.png", "a\0b.png", "x" * 300 + ".png",
    "~/a.png", "C:\\a.png", "images/a.png\n", "images/a.png ",
]  # fmt: skip
LABELS = ["normal", "pneumonia", "covid", "0", "1", "10", "2", " normal", "Normal", "sick", "", "1_0"]
SPLIT_CELLS = ["train", "val", "test", "TEST", "Val", "validation", "dev", "", "training", "train\n"]
IDS = ["p1", "p2", "p3", "p1 ", "", "P1", "001", "1"]
TABULAR = ["age=54;sex=M", "age=54", "age", "=5", "age=1;age=2", "a=b=c", ";;", "54", "M"]
HUGE = "h" * 140_000  # past csv's field limit (131072)

cell = st.one_of(
    st.sampled_from([*PATHS, *LABELS, *SPLIT_CELLS, *IDS, *TABULAR, HUGE]),
    st.text(max_size=30),
    st.text(alphabet=',"\n\r\0;= \t\\', max_size=12),
)


def _serialise(rows: list[list[str]], how: str, newline: str) -> str:
    if how == "naive":
        return "".join(",".join(r) + newline for r in rows)
    out = io.StringIO()
    quoting = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "nonnumeric": csv.QUOTE_NONNUMERIC}[how]
    csv.writer(out, quoting=quoting, lineterminator=newline).writerows(rows)
    return out.getvalue()


@st.composite
def csv_documents(draw) -> bytes:
    header = draw(
        st.just(HEADER.split(","))
        | st.just(list(dict.fromkeys(MAPPED.header_names())))
        | st.lists(st.sampled_from(HEADER_NAMES) | st.text(max_size=10), max_size=10)
    )
    width = max(len(header), 1)
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=width + 2), max_size=8))
    text = _serialise(
        [header, *rows],
        draw(st.sampled_from(["naive", "minimal", "all", "nonnumeric"])),
        draw(st.sampled_from(["\n", "\r\n", "\r"])),
    )
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]  # cut off anywhere, even inside a quoted cell
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]))
    return text.encode(encoding, errors="replace")


labels_files = st.none() | st.lists(st.sampled_from(LABELS) | st.text(max_size=8), max_size=5).map(
    lambda xs: "\n".join(xs).encode("utf-8", errors="surrogatepass")
)
labels_args = st.sampled_from([None, LABELS[:3], LABELS[:2]]) | st.lists(
    st.sampled_from(LABELS[:7]), min_size=2, max_size=4, unique=True
)


@given(manifest=csv_documents(), labels_file=labels_files, labels=labels_args, skip=st.booleans())
@example(manifest=f"{HEADER}\np1,normal,train,{HUGE},,,,\n".encode(), labels_file=None, labels=None, skip=0)
@example(manifest=b"id,label,split,image\np1,normal,train,a\0b.png\n", labels_file=None, labels=None, skip=1)
@example(
    manifest=f"id,label,split,image\np1,normal,train,{'x' * 300}.png\np2,sick,test,images/a.png\n".encode(),
    labels_file=None, labels=None, skip=True,
)  # fmt: skip
def test_arbitrary_csv_text(site, manifest, labels_file, labels, skip):
    result = _run(site, manifest, labels_file, labels=labels, on_bad_row="skip" if skip else "fail")
    _obeys_the_rules(site, result, labels, labels_file)


@given(manifest=csv_documents(), labels=labels_args)
def test_arbitrary_csv_text_through_a_task_mapping(site, manifest, labels):
    result = _run(site, manifest, None, labels=labels, columns=MAPPED)
    _obeys_the_rules(site, result, labels, None)


# -- structured but wrong rows --------------------------------------------------------------------------


@st.composite
def structured(draw, columns: Columns) -> bytes:
    """A well-formed manifest under `columns` whose rows are mostly valid, each with a few bad cells."""
    names = list(dict.fromkeys(columns.header_names()))
    if draw(st.booleans()):
        names = draw(st.permutations(names))
    rows = []
    for i in range(draw(st.integers(1, 6))):
        row = {
            columns.id: f"p{i}",
            columns.label: draw(st.sampled_from(LABELS[:3])),
            columns.split: draw(st.sampled_from(SPLITS)),
            columns.image: draw(st.sampled_from(["images/a.png", ""])),
            columns.audio: draw(st.sampled_from(["audio/a.wav", ""])),
            columns.text: draw(st.sampled_from(["cough, fever", ""])),
        }
        if columns.tabular_features:
            row.update({"age": draw(st.sampled_from(["54", "", "5=4"])), "sex": draw(st.sampled_from("MF"))})
        else:
            row[columns.tabular] = draw(st.sampled_from(TABULAR[:3] + [""]))
        for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2]))):  # the mistakes
            row[draw(st.sampled_from(names))] = draw(cell)
        rows.append([row.get(n, "") for n in names])
    return _serialise([names, *rows], "minimal", "\n").encode()


# the site's own limits on its files (site.toml [data]) apply while the manifest's files are checked
SITE_TOMLS = [
    None, b"[data]\nmax_file_mb = 1e308\n", b"[data]\nmax_file_mb = 1e-9\n",
    b"[data]\nmax_image_pixels = 1\n",
    b"[data]\nmax_audio_seconds = 1e-300\n", b"[data]\nmax_image_pixels = 9223372036854775807\n",
    b"[data]\nmax_file_mb = nan\n", b"[privacy]\n", b"[data]\nx = 1\n", b"\xff",
    b"[data]\nmax_file_mb = [[[[[[1]]]]]]\n",
]  # fmt: skip


@given(
    manifest=structured(Columns()), labels_file=st.none() | st.just(b"normal\npneumonia\ncovid\n"),
    labels=labels_args, skip=st.booleans(), site_toml=st.sampled_from(SITE_TOMLS),
)  # fmt: skip
@example(
    manifest=f"{HEADER}\np1,normal,train,images/link.png,,,,\np2,covid,test,images/a.png,,,,\n".encode(),
    labels_file=None, labels=None, skip=True, site_toml=None,
)  # fmt: skip
@example(
    manifest=f"{HEADER}\np1,normal,train,images/a.png,,,,\np2,covid,test,images/a.png,,,,\n".encode(),
    labels_file=None, labels=None, skip=False, site_toml=b"[data]\nmax_file_mb = 1e308\n",
)  # fmt: skip
def test_structured_rows(site, manifest, labels_file, labels, skip, site_toml):
    policy = site / "site.toml"
    policy.unlink(missing_ok=True)
    if site_toml is not None:
        policy.write_bytes(site_toml)
    try:
        result = _run(site, manifest, labels_file, labels=labels, on_bad_row="skip" if skip else "fail")
    finally:
        policy.unlink(missing_ok=True)
    _obeys_the_rules(site, result, labels, labels_file)


@given(manifest=structured(MAPPED), labels=labels_args, skip=st.booleans())
def test_structured_rows_through_a_task_mapping(site, manifest, labels, skip):
    result = _run(site, manifest, None, labels=labels, columns=MAPPED, on_bad_row="skip" if skip else "fail")
    _obeys_the_rules(site, result, labels, None)


def test_labels_file_that_is_a_folder(site):
    (site / MANIFEST_NAME).write_bytes(b"id,label,split,text\np1,a,train,x\np2,b,test,y\n")
    (site / LABELS_NAME).unlink(missing_ok=True)
    (site / LABELS_NAME).mkdir()
    try:
        with pytest.raises(MMFedError, match="labels.txt"):
            load_manifest(site)
    finally:
        (site / LABELS_NAME).rmdir()
