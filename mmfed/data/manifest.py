"""The site directory format: `manifest.csv` (+ optional `labels.txt`), read and validated.

    id,label,split,image,audio,text,video
    p001,pneumonia,train,images/p001.png,,"Cough for 3 days",
    p002,normal,test,images/p002.png,audio/p002.wav,,

Paths are relative to the site directory; `text` is inline; an empty cell means the sample lacks that
modality. `labels.txt` (one label per line) fixes the class order; without it the labels found are
sorted (numerically when they are all integers). Every problem is reported with its row and column.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mmfed.config import MODALITIES
from mmfed.data.file_probe import check_file, empty_like, is_empty_like
from mmfed.data.tabular import parse_cell
from mmfed.errors import ManifestError
from mmfed.task import Columns

MANIFEST_NAME = "manifest.csv"
LABELS_NAME = "labels.txt"
REQUIRED_COLUMNS = ("id", "label", "split")
SPLITS = ("train", "val", "test")
FILE_MODALITIES = ("image", "audio", "video")
ON_BAD_ROW = ("fail", "skip")


@dataclass(frozen=True)
class RowProblem:
    row: int  # 1-based data row (the header is not counted)
    line: int  # line in the file where the row ends (quoted text may span lines)
    column: str
    message: str
    sample_id: str = ""

    def __str__(self) -> str:
        who = f" (id {self.sample_id!r})" if self.sample_id else ""
        return f"row {self.row}{who}, line {self.line}, column '{self.column}': {self.message}"


@dataclass(frozen=True)
class Sample:
    id: str
    label: int
    split: str
    image: Path | None = None
    audio: Path | None = None
    text: str | None = None
    video: Path | None = None
    tabular: str | None = None  # inline name=value;name=value (see mmfed.data.tabular)
    row: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)


@dataclass
class SiteManifest:
    site_dir: Path
    labels: list[str]
    samples: list[Sample]
    skipped: list[RowProblem] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def modality_counts(self) -> dict[str, int]:
        return {m: sum(getattr(s, m) is not None for s in self.samples) for m in MODALITIES}


def sort_labels(found: Iterable[str]) -> list[str]:
    """The classes found in a manifest's labels, in order; 'nan', '#N/A', 'None' (an export's empty cell)
    are no class unless a labels.txt or task names them."""
    found = {x for x in found if not is_empty_like(x)}
    try:
        return sorted(found, key=int)
    except ValueError:
        return sorted(found)


def read_labels(site_dir: Path) -> list[str] | None:
    path = site_dir / LABELS_NAME
    if not path.exists():
        return None
    labels = [line.strip() for line in _text(path).splitlines() if line.strip()]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ManifestError(
            str(path), [RowProblem(0, 0, "label", f"label {d!r} listed twice") for d in dupes]
        )
    if len(labels) < 2:
        raise ManifestError(str(path), [RowProblem(0, 0, "label", "list at least two labels, one per line")])
    return labels


def load_manifest(
    site_dir: str | Path,
    on_bad_row: str = "fail",
    report_path: str | Path | None = None,
    labels: list[str] | None = None,
    check_files: bool = True,
    columns: Columns | None = None,
) -> SiteManifest:
    """Read and validate `site_dir/manifest.csv`.

    on_bad_row='fail' raises ManifestError listing every problem; 'skip' drops the bad rows and writes
    them, with the reason, to `report_path` (default `site_dir/skipped_rows.csv` is never used: the
    caller names where the report goes, e.g. the run directory). `labels` overrides labels.txt, so all
    sites of a federation share one class order. `columns` (a task's [columns]) says which of the site's
    columns feed what; problems are reported under the site's own column names.
    """
    columns = columns or Columns()
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    site_dir = Path(site_dir)
    path = site_dir / MANIFEST_NAME
    if site_dir.is_file():
        raise ManifestError(str(site_dir), [RowProblem(0, 0, "-", "is a file; name the site's folder")])
    if not site_dir.is_dir():
        raise ManifestError(str(site_dir), [RowProblem(0, 0, "-", "site directory does not exist")])
    if path.exists() and not path.is_file():
        raise ManifestError(str(path), [RowProblem(0, 0, "-", "is a directory; the manifest is a file")])
    if not path.is_file():
        raise ManifestError(
            str(path),
            [
                RowProblem(
                    0,
                    0,
                    "-",
                    f"no {MANIFEST_NAME}; create one with header id,label,split,image,audio,text,video",
                )
            ],
        )
    label_names = labels if labels is not None else read_labels(site_dir)
    reading = _Reading(site_dir, columns)
    header, rows = reading.rows(path)
    parsed = reading.check(rows, label_names)
    if label_names is None:
        label_names = sort_labels(
            c["label"] for i, _, c in parsed if i not in reading.bad_rows and c.get("label")
        )
    read = set(columns.header_names())
    extra_columns = [c for c in header if c not in read]
    samples = reading.samples(parsed, label_names, extra_columns, check_files)
    problems = sorted(reading.problems, key=lambda p: (p.row, p.column))
    if problems and on_bad_row == "fail":
        raise ManifestError(str(path), problems)
    if problems:
        _write_report(report_path, path, problems)
    if not samples:
        raise ManifestError(str(path), problems or [RowProblem(0, 0, "-", "the manifest has no samples")])
    if len(label_names) < 2:
        raise ManifestError(
            str(path), [RowProblem(0, 0, "label", "need at least two distinct labels to train")]
        )
    return SiteManifest(
        site_dir, list(label_names), samples, problems if on_bad_row == "skip" else [], extra_columns
    )


class _Reading:
    """One manifest being read: every problem found, under the site's own column names."""

    def __init__(self, site_dir: Path, columns: Columns):
        self.site_dir, self.columns = site_dir, columns
        self.problems: list[RowProblem] = []
        self.bad_rows: set[int] = set()

    def bad(self, index: int, line: int, column: str, message: str, sample_id: str) -> None:
        shown = self.columns.source(column) if column in _CANONICAL else column
        self.problems.append(RowProblem(index, line, shown, message, sample_id))
        self.bad_rows.add(index)

    def rows(self, path: Path) -> tuple[list[str], list[tuple[int, dict, str | None]]]:
        reader = csv.DictReader(io.StringIO(_text(path), newline=""), strict=True)  # an unclosed quote
        try:
            header = [h.strip().strip("\ufeff").strip() for h in (reader.fieldnames or [])]  # BOMs: Excel
            _check_header(path, header, self.columns)
            reader.fieldnames = header
            rows = []
            for raw in reader:
                error = "row has more cells than the header has columns" if None in raw else None
                rows.append((reader.line_num, _project(raw, self.columns), error))
        except csv.Error as exc:  # its message may quote the cell (a record): say only where and why
            problem = (
                f"a cell is longer than {csv.field_size_limit()} characters; shorten that text"
                if "field limit" in str(exc)
                else "not readable as CSV; check its quotes"
            )
            raise ManifestError(str(path), [RowProblem(0, reader.line_num, "-", problem)]) from None
        return header, rows

    def check(self, rows: list, label_names: list[str] | None) -> list[tuple[int, int, dict]]:
        """(row index, line, cells) of every non-blank row; each row's problems noted."""
        parsed = []
        seen_ids: dict[str, int] = {}
        for index, (line, cells, row_error) in enumerate(rows, start=1):
            if not any(cells[_EXTRA].values()) and not row_error:
                continue  # blank line
            sample_id = cells.get("id", "")

            def bad(column: str, message: str, index=index, line=line, sample_id=sample_id) -> None:
                self.bad(index, line, column, message, sample_id)

            if row_error:
                bad("-", row_error + "; quote text that contains commas")
            if not sample_id:
                bad("id", "empty id; give every sample a unique id")
            elif sample_id in seen_ids:
                bad("id", f"duplicate id {sample_id!r} (first used on row {seen_ids[sample_id]})")
            else:
                seen_ids[sample_id] = index
            self._check_cells(cells, label_names, bad)
            parsed.append((index, line, cells))
        return parsed

    def _check_cells(self, cells: dict, label_names: list[str] | None, bad) -> None:
        split = cells.get("split", "").lower()
        if split not in SPLITS:
            hint = " (use 'val')" if split in ("valid", "validation", "dev") else ""
            bad("split", f"split {cells.get('split', '')!r} is not one of {', '.join(SPLITS)}{hint}")
        if not cells.get("label"):
            bad("label", "empty label")
        elif is_empty_like(cells["label"]) and cells["label"] not in (label_names or ()):
            bad("label", empty_like(f"label {cells['label']!r}", "fill it in (or list it in labels.txt)"))
        elif label_names is not None and cells["label"] not in label_names:
            bad("label", f"unknown label {cells['label']!r}; known labels: {', '.join(label_names)}")
        if is_empty_like(cells.get("text", "")):
            bad("text", empty_like(repr(cells["text"]), "leave the cell empty if the record has no text"))
        if not any(cells.get(m) for m in MODALITIES):
            filled = ", ".join(self.columns.source(m) for m in MODALITIES)
            bad("-", f"no modality at all: fill at least one of {filled}")
        for column, problem in cells.pop(_PROBLEMS, []):
            bad(column, problem)
        if cells.get("tabular"):
            problem = parse_cell(cells["tabular"])[1]
            if problem:
                bad("tabular", problem)

    def samples(
        self, parsed: list, label_names: list[str], extra_columns: list[str], check_files: bool
    ) -> list[Sample]:
        label_index = {name: i for i, name in enumerate(label_names)}
        samples = []
        for index, line, cells in parsed:
            fields: dict[str, object] = {}
            for modality in FILE_MODALITIES:
                cell = cells.get(modality, "")
                if not cell:
                    continue
                if not check_files:
                    fields[modality] = self.site_dir / cell
                    continue
                fields[modality], problem = check_file(self.site_dir, cell, modality)
                if problem:
                    self.bad(index, line, modality, problem, cells.get("id", ""))
            if index in self.bad_rows:
                continue
            samples.append(
                Sample(
                    id=cells["id"],
                    label=label_index[cells["label"]],
                    split=cells["split"].lower(),
                    text=cells.get("text") or None,
                    tabular=cells.get("tabular") or None,
                    row=index,
                    extra={c: cells[_EXTRA].get(c, "") for c in extra_columns},
                    **fields,
                )
            )
        return samples


def _text(path: Path) -> str:
    """A site file's text (UTF-8, BOM or not); undecodable, unreadable or NUL-holding -> ManifestError."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        problem = RowProblem(0, 0, "-", f"cannot be read ({exc.strerror or exc}); make it a readable file")
        raise ManifestError(str(path), [problem]) from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problem = RowProblem(0, line, "-", "not UTF-8 text; save it as UTF-8 (Excel: CSV UTF-8)")
        raise ManifestError(str(path), [problem]) from None
    if "\0" in text:  # UTF-16 without a byte-order mark decodes, as text full of NULs
        line = text.count("\n", 0, text.index("\0")) + 1
        problem = RowProblem(0, line, "-", "holds NUL bytes (UTF-16?); save it as UTF-8")
        raise ManifestError(str(path), [problem])
    return text


def _check_header(path: Path, header: list[str], columns: Columns) -> None:
    problems = []
    if len(header) == 1 and ";" in header[0]:
        problems.append(
            RowProblem(0, 1, "-", "the header uses ';' — save the manifest with ',' as separator")
        )
    for required in REQUIRED_COLUMNS:
        if columns.source(required) not in header:
            name = columns.source(required)
            problems.append(RowProblem(0, 1, name, f"required column '{name}' is missing from the header"))
    modality_columns = [c for c in columns.header_names() if c not in REQUIRED_COLUMNS] + [
        columns.source(m) for m in MODALITIES
    ]
    if not any(c in header for c in modality_columns):
        listed = ", ".join(dict.fromkeys(columns.source(m) for m in MODALITIES))
        problems.append(RowProblem(0, 1, "-", f"no modality column; add at least one of {listed}"))
    known = tuple(dict.fromkeys(columns.header_names()))
    for column in header:
        if column in known:
            continue
        close = difflib.get_close_matches(column.lower(), known, n=1, cutoff=0.75)
        if close:
            problems.append(
                RowProblem(0, 1, column, f"unknown column '{column}' — did you mean '{close[0]}'?")
            )
    dupes = sorted({c for c in header if header.count(c) > 1})
    for column in dupes:
        problems.append(RowProblem(0, 1, column, f"column '{column}' appears twice in the header"))
    if problems:
        raise ManifestError(str(path), problems)


# canonical names of what a row holds; _project maps a site's columns onto them
_CANONICAL = (*REQUIRED_COLUMNS, *MODALITIES)
_PROBLEMS = "\0problems"  # keys no CSV header can produce: a row's projection problems, its raw cells
_EXTRA = "\0extra"


def _project(raw: dict[str | None, str | None], columns: Columns) -> dict:
    """A row under the canonical names (id, label, split, the modalities), read through `columns`;
    per-feature tabular columns are joined into the inline `name=value;...` cell."""
    cells = {k: (v or "").strip() for k, v in raw.items() if k is not None}
    out: dict = {name: cells.get(columns.source(name), "") for name in _CANONICAL if name != "tabular"}
    problems = []
    if columns.tabular_features:
        parts = []
        for feature in columns.tabular_features:
            value = cells.get(feature, "")
            if ";" in value or "=" in value:
                problems.append((feature, f"value {value!r} holds ';' or '='; remove them"))
            elif value:
                parts.append(f"{feature}={value}")
        out["tabular"] = ";".join(parts)
    else:
        out["tabular"] = cells.get(columns.tabular, "")
    out[_PROBLEMS], out[_EXTRA] = problems, cells
    return out


def _write_report(report_path: str | Path | None, manifest: Path, problems: list[RowProblem]) -> None:
    if report_path is None:
        raise ValueError("on_bad_row='skip' needs report_path: skipped rows are never dropped silently")
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    with report_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["manifest", "row", "line", "id", "column", "problem"])
        for p in problems:
            writer.writerow([str(manifest), p.row, p.line, p.sample_id, p.column, p.message])


def write_manifest(site_dir: Path, rows: Iterable[dict[str, str]], labels: list[str] | None = None) -> Path:
    """Write a manifest (used by the scenario generators); cells not given are left empty."""
    site_dir.mkdir(parents=True, exist_ok=True)
    path = site_dir / MANIFEST_NAME
    columns = list(REQUIRED_COLUMNS + MODALITIES)
    rows = list(rows)
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    if labels is not None:
        (site_dir / LABELS_NAME).write_text("".join(f"{x}\n" for x in labels), encoding="utf-8")
    return path
