"""A task file and the site directories that hold it: draft a task.toml from a site's manifest
(`mmfed task init --from-site`), and check sites against a task (`mmfed task check`).

A draft is a proposal for the consortium to review, never a silent decision: what it guessed (which
column is the label, which columns are tabular features and their values) is listed as notes.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from mmfed.config import MODALITIES, DataSpec, TabularSpec
from mmfed.data.manifest import LABELS_NAME, MANIFEST_NAME, load_manifest, read_labels, sort_labels
from mmfed.data.tabular import TabularProcessor
from mmfed.errors import ConfigError, ManifestError
from mmfed.task import Columns, Task

# names a hospital export may give the row columns, most likely first
ROW_NAMES = {
    "id": ("id", "patient_id", "record_id", "sample_id", "study_id", "case_id"),
    "label": ("label", "diagnosis", "finding", "class", "target", "outcome"),
    "split": ("split", "set", "subset", "partition"),
}
SUFFIXES = {
    "image": (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"),
    "audio": (".wav", ".flac", ".ogg"),
    "video": (".mp4", ".mpg", ".mpeg", ".avi", ".mov", ".mkv"),
}
MAX_CATEGORIES = 12  # more distinct values than this is free text or an identifier, not a category


def draft_task(site_dir: Path, name: str) -> tuple[Task, list[str]]:
    """(a task for this site's manifest, notes on every guess); raises ConfigError when it holds nothing
    a task could be built from."""
    header, rows = _read(site_dir / MANIFEST_NAME)
    notes: list[str] = []
    row_columns = {key: _find(header, names, key, notes) for key, names in ROW_NAMES.items()}
    used = set(row_columns.values())
    mapped: dict[str, str] = {}
    for modality in ("image", "audio", "video", "text"):
        column = modality if modality in header else _guess(header, rows, modality, used)
        if column:
            mapped[modality] = column
            used.add(column)
            if column != modality:
                notes.append(f"column {column!r} is taken as {modality}")
    numeric, categorical, features = _tabular(header, rows, used, notes)
    modalities = [m for m in MODALITIES if m in mapped or (m == "tabular" and features)]
    if not modalities:
        raise ConfigError(
            str(site_dir / MANIFEST_NAME),
            "no column holds image, audio or video files, text or tabular values",
        )
    labels = _labels(site_dir, rows, row_columns["label"], notes)
    columns = Columns(**row_columns, **mapped, **({"tabular": tuple(features)} if features else {}))
    if "tabular" in header and not features:
        columns = Columns(**row_columns, **mapped, tabular="tabular")
        modalities = [m for m in MODALITIES if m in mapped or m == "tabular"]
        notes.append("column 'tabular' holds inline name=value cells: declare its features under [tabular]")
    data = DataSpec(tabular=TabularSpec(tuple(numeric), tuple(categorical))) if features else DataSpec()
    notes.append("tensor settings ([image], [audio], [text], [video]) are the defaults: review them")
    return Task(name, labels, tuple(modalities), data=data, columns=columns), notes


@dataclass
class SiteCheck:
    site: Path
    records: dict[str, int] = field(default_factory=dict)  # per split
    modalities: dict[str, int] = field(default_factory=dict)  # records holding each task modality
    problems: list[str] = field(default_factory=list)


def check_sites(task: Task, sites: list[Path]) -> list[SiteCheck]:
    """Each site read through the task: its manifest, labels.txt and tabular values; problems listed."""
    out = []
    for site in sites:
        check = SiteCheck(site)
        out.append(check)
        try:
            if (site / LABELS_NAME).exists() and read_labels(site) != list(task.labels):
                check.problems.append(
                    f"{site / LABELS_NAME} lists {read_labels(site)}, the task {list(task.labels)}"
                )
            manifest = load_manifest(site, labels=list(task.labels), columns=task.columns)
        except (ManifestError, ConfigError) as exc:
            check.problems.append(str(exc))
            continue
        for sample in manifest.samples:
            check.records[sample.split] = check.records.get(sample.split, 0) + 1
        check.modalities = {
            m: sum(getattr(s, m) is not None for s in manifest.samples) for m in task.modalities
        }
        if not any(check.modalities.values()):
            check.problems.append(f"no record holds any of the task's modalities {list(task.modalities)}")
        if "tabular" in task.modalities:
            processor = TabularProcessor(task.data.tabular)
            bad = [(s.row, p) for s in manifest.samples if s.tabular and (p := processor.problem(s.tabular))]
            check.problems += [f"row {row}, tabular: {problem}" for row, problem in bad[:10]]
            if len(bad) > 10:
                check.problems.append(f"... and {len(bad) - 10} more tabular values")
    return out


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise ConfigError(str(path), f"not found; a site directory holds {MANIFEST_NAME}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    if not rows:
        raise ConfigError(str(path), "has no rows to draft a task from")
    return header, rows


def _find(header: list[str], names: tuple[str, ...], key: str, notes: list[str]) -> str:
    lowered = {h.lower(): h for h in header}
    for candidate in names:
        if candidate in lowered:
            if lowered[candidate] != key:
                notes.append(f"column {lowered[candidate]!r} is taken as the {key}")
            return lowered[candidate]
    notes.append(f'no {key} column found: name it under [columns] ({key} = "...")')
    return key


def _guess(header: list[str], rows: list[dict[str, str]], modality: str, used: set[str]) -> str | None:
    for column in header:
        values = [r[column] for r in rows if r.get(column)]
        if column in used or column in MODALITIES or not values:
            continue
        if modality in SUFFIXES and all(v.lower().endswith(SUFFIXES[modality]) for v in values):
            return column
        if modality == "text" and sum(len(v) for v in values) / len(values) > 20 and not _numbers(values):
            return column  # long free text: notes, reports
    return None


def _tabular(header: list[str], rows: list[dict[str, str]], used: set[str], notes: list[str]):
    numeric, categorical, features = [], [], []
    for column in header:
        if column in used or column in MODALITIES:
            continue
        values = [r[column] for r in rows if r.get(column)]
        if len(set(values)) < 2:
            notes.append(f"column {column!r} holds {'one value' if values else 'nothing'}: left out")
        elif (numbers := _numbers(values)) is not None:
            top = max(abs(x) for x in numbers) or 1.0
            numeric.append((column, float(10 ** math.ceil(math.log10(top)))))
            features.append(column)
        elif len(distinct := sorted(set(values))) <= MAX_CATEGORIES and not any(
            ";" in v or "=" in v for v in distinct
        ):
            categorical.append((column, tuple(distinct)))
            features.append(column)
        else:
            notes.append(
                f"column {column!r} has {len(set(values))} distinct values: left out (not a category)"
            )
    if features:
        notes.append(
            f"tabular features {features}: numbers are divided by the [tabular] scale, categories are the "
            "values this site has — add the values other sites use"
        )
    return numeric, categorical, features


def _numbers(values: list[str]) -> list[float] | None:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return None
    return numbers if all(math.isfinite(x) for x in numbers) else None


def _labels(site_dir: Path, rows: list[dict[str, str]], column: str, notes: list[str]) -> tuple[str, ...]:
    declared = read_labels(site_dir)
    if declared:
        return tuple(declared)
    found = sort_labels(r[column] for r in rows if r.get(column))
    if len(found) < 2:
        raise ConfigError(
            str(site_dir / MANIFEST_NAME), f"column {column!r} holds fewer than two labels; a task needs two"
        )
    notes.append(f"labels {found} are those this site has: add any class other sites have")
    return tuple(found)
