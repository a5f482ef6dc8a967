import csv
import os
import shutil

import pytest

from mmfed.data.manifest import load_manifest, write_manifest
from mmfed.errors import ManifestError

HEADER = "id,label,split,image,audio,text,video\n"


@pytest.fixture
def site(tmp_path, shared_data):
    """A site dir with one real file of each kind, copied from ../shared/data."""
    (tmp_path / "images").mkdir()
    (tmp_path / "audio").mkdir()
    (tmp_path / "video").mkdir()
    xray = sorted((shared_data / "covid_chestxray_subset" / "images").glob("*.jpg"))[0]
    shutil.copy(xray, tmp_path / "images" / "a.jpg")
    shutil.copy(shared_data / "fsdd" / "recordings" / "3_theo_7.wav", tmp_path / "audio" / "a.wav")
    shutil.copy(shared_data / "grid_av_samples" / "video" / "bbaf2n.mpg", tmp_path / "video" / "a.mpg")
    (tmp_path / "labels.txt").write_text("normal\npneumonia\n")
    return tmp_path


def write(site, body: str, header: str = HEADER):
    (site / "manifest.csv").write_text(header + body, encoding="utf-8")


def problems_of(site, **kw):
    with pytest.raises(ManifestError) as info:
        load_manifest(site, **kw)
    return info.value.problems, str(info.value)


def test_valid_manifest_with_every_modality_and_quoted_text(site):
    write(
        site,
        'p1,normal,train,images/a.jpg,audio/a.wav,"Cough, fever\nfor 3 days",video/a.mpg\n'
        "p2,pneumonia,TEST,,audio/a.wav,,\n"
        "\n"
        "p3,pneumonia,val,,,chest pain,\n",
    )
    m = load_manifest(site)
    assert [s.id for s in m.samples] == ["p1", "p2", "p3"]
    assert m.labels == ["normal", "pneumonia"]
    assert m.samples[0].modalities == ("image", "audio", "text", "video")
    assert m.samples[0].text == "Cough, fever\nfor 3 days"
    assert m.samples[1].split == "test" and m.samples[1].modalities == ("audio",)
    assert m.samples[2].label == 1
    assert m.modality_counts() == {"image": 1, "audio": 2, "text": 2, "video": 1, "tabular": 0}


def test_excel_bom_and_extra_columns_are_accepted(site):
    (site / "manifest.csv").write_text("\ufeffid,label,split,image,ward\np1,normal,train,images/a.jpg,icu\n")
    m = load_manifest(site)
    assert m.samples[0].extra == {"ward": "icu"} and m.extra_columns == ["ward"]


@pytest.mark.parametrize(
    "row, column, needle",
    [
        ("p1,normal,train,images/missing.png,,,", "image", "not found"),
        ("p1,normal,train,,audio/../../etc/passwd,,", "audio", "outside the site directory"),
        ("p1,normal,train,/etc/hostname,,,", "image", "absolute"),
        ("p1,sick,train,images/a.jpg,,,", "label", "unknown label 'sick'"),
        ("p1,,train,images/a.jpg,,,", "label", "empty label"),
        ("p1,normal,training,images/a.jpg,,,", "split", "not one of train, val, test"),
        ("p1,normal,validation,images/a.jpg,,,", "split", "use 'val'"),
        ("p1,normal,train,,,,", "-", "no modality at all"),
        (",normal,train,images/a.jpg,,,", "id", "empty id"),
        ("p1,normal,train,audio/a.wav,,,", "image", "is not an image"),
        ("p1,normal,train,,images/a.jpg,,", "audio", "not a readable audio"),
        ("p1,normal,train,,,,audio/a.wav", "video", "has no video stream"),
        ("p1,normal,train,,,,images/a.jpg", "video", "still image"),
        ("p1,normal,train,images,,,", "image", "is not a file"),
        ("p1,normal,train,images/a.jpg,,,,extra", "-", "more cells than the header"),
    ],
)
def test_each_bad_row_is_named_with_row_and_column(site, row, column, needle):
    write(site, "p0,normal,train,images/a.jpg,,,\n" + row + "\n")
    problems, message = problems_of(site)
    assert len(problems) == 1
    assert problems[0].row == 2 and problems[0].column == column
    assert needle in problems[0].message
    assert "row 2" in message and "--on-bad-row skip" in message


def test_duplicate_id_names_both_rows(site):
    write(
        site,
        "p1,normal,train,images/a.jpg,,,\np2,normal,test,images/a.jpg,,,\np1,normal,test,images/a.jpg,,,\n",
    )
    problems, _ = problems_of(site)
    assert [(p.row, p.column) for p in problems] == [(3, "id")]
    assert "first used on row 1" in problems[0].message


def test_empty_and_unreadable_files(site):
    (site / "images" / "empty.png").write_bytes(b"")
    (site / "images" / "secret.png").write_bytes((site / "images" / "a.jpg").read_bytes())
    os.chmod(site / "images" / "secret.png", 0)
    write(site, "p1,normal,train,images/empty.png,,,\np2,normal,train,images/secret.png,,,\n")
    try:
        if os.access(
            site / "images" / "secret.png", os.R_OK
        ):  # root reads anything: test the empty file only
            write(site, "p1,normal,train,images/empty.png,,,\np2,normal,train,images/a.jpg,,,\n")
            problems, _ = problems_of(site)
            assert [p.row for p in problems] == [1] and "empty" in problems[0].message
        else:
            problems, _ = problems_of(site)
            assert [p.row for p in problems] == [1, 2]
            assert "cannot be read" in problems[1].message
    finally:
        os.chmod(site / "images" / "secret.png", 0o644)


def test_all_problems_reported_at_once(site):
    write(site, "p1,sick,train,images/a.jpg,,,\np2,normal,nope,images/a.jpg,,,\np3,normal,train,x.png,,,\n")
    problems, message = problems_of(site)
    assert [p.row for p in problems] == [1, 2, 3]
    assert "3 problem(s)" in message


def test_skip_drops_bad_rows_and_writes_report(site, tmp_path_factory):
    write(
        site, "p1,normal,train,images/a.jpg,,,\np2,sick,train,images/a.jpg,,,\np3,normal,test,gone.png,,,\n"
    )
    before = (site / "manifest.csv").read_bytes()
    report = tmp_path_factory.mktemp("run") / "skipped.csv"
    m = load_manifest(site, on_bad_row="skip", report_path=report)
    assert [s.id for s in m.samples] == ["p1"]
    assert len(m.skipped) == 2
    rows = list(csv.DictReader(report.open()))
    assert [(r["row"], r["id"], r["column"]) for r in rows] == [("2", "p2", "label"), ("3", "p3", "image")]
    assert (site / "manifest.csv").read_bytes() == before  # the site's own files are never touched


def test_skip_without_report_path_refuses(site):
    write(site, "p1,normal,train,images/a.jpg,,,\np2,sick,train,images/a.jpg,,,\n")
    with pytest.raises(ValueError, match="never dropped silently"):
        load_manifest(site, on_bad_row="skip")


def test_skip_with_every_row_bad_still_fails(site, tmp_path):
    write(site, "p1,sick,train,images/a.jpg,,,\n")
    with pytest.raises(ManifestError):
        load_manifest(site, on_bad_row="skip", report_path=tmp_path / "r.csv")


@pytest.mark.parametrize(
    "header, needle",
    [
        ("id;label;split;image\n", "';'"),
        ("id,split,image\n", "required column 'label'"),
        ("id,label,split,notes\n", "no modality column"),
        ("id,label,split,imgae,audio\n", "did you mean 'image'"),
        ("id,label,split,image,image\n", "appears twice"),
    ],
)
def test_header_problems(site, header, needle):
    write(site, "", header=header)
    _, message = problems_of(site)
    assert needle in message


def test_missing_manifest_and_site_dir(tmp_path):
    _, message = problems_of(tmp_path)
    assert "no manifest.csv" in message
    _, message = problems_of(tmp_path / "nope")
    assert "does not exist" in message


def test_labels_without_labels_txt_sort_numerically(tmp_path):
    write_manifest(
        tmp_path,
        [
            {"id": str(i), "label": str(lab), "split": "train", "text": "x"}
            for i, lab in enumerate([10, 2, 1])
        ],
    )
    assert load_manifest(tmp_path).labels == ["1", "2", "10"]


def test_labels_txt_duplicate_is_an_error(site):
    (site / "labels.txt").write_text("a\nb\na\n")
    write(site, "p1,a,train,,,x,\n")
    _, message = problems_of(site)
    assert "listed twice" in message
