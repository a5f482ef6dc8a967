"""`covid-cxr`: the hospital scenario. Chest X-ray + clinical note, COVID-19 vs other findings, one site
per country, small countries merged into regional sites.

Reads a directory in the layout of the COVID-19 image data collection (Cohen et al., github
ieee8023/covid-chestxray-dataset): `metadata.csv` (or the `metadata_subset.csv` of our shared subset) and
`images/`. Each X-ray row becomes a sample: the image (converted to grey and shrunk to at most 256 px so
the build stays small), the `clinical_notes` text kept as written (de-identification happens when the
text is tokenised, see mmfed.data.deid), and age and sex as the optional tabular modality (`age=54;sex=M`).
Label: `covid-19` when the finding names COVID-19, else `other` (bacterial, viral, fungal pneumonias,
ARDS, no finding).

Sites: the `location` column's last part is the country; a country with fewer than `min_site_size`
images joins its region (Europe, Asia & Middle East, ...), and a region still too small joins `other`.
Train/test is split inside each site by patient (about a quarter of a site's images are test), so no
patient is in both. The notes often state the diagnosis: the label-leak guard (`mask-diagnosis`) exists
because of this. Licences: per image in the metadata (mostly CC BY-NC-SA: non-commercial).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios import BUILTINS
from mmfed.data.scenarios.build import build_once
from mmfed.errors import DataError

GENERATOR_VERSION = "covid-cxr/2"
LABELS = list(BUILTINS["covid-cxr"].labels)  # the task's classes, declared once
METADATA_NAMES = ("metadata.csv", "metadata_subset.csv")
MAX_SIDE = 256
TEST_SHARE = 0.25
REQUIRED = ("patientid", "finding", "modality", "location", "filename", "clinical_notes")

REGIONS = {
    "Europe": {
        "Austria", "Belgium", "Denmark", "France", "Germany", "Greece", "Italy", "Malta", "Netherlands",
        "Portugal", "Russia", "Spain", "Sweden", "Switzerland", "United Kingdom", "UK", "Ireland",
        "Poland", "Norway", "Finland", "Czech Republic",
    },
    "Asia & Middle East": {
        "China", "Hong Kong", "Macao", "Taiwan", "Japan", "South Korea", "Korea", "Vietnam",
        "Philippines", "Singapore", "India", "Pakistan", "Iran", "Iraq", "Israel", "Saudi Arabia",
        "Turkey", "Egypt", "Lebanon", "United Arab Emirates", "Qatar",
    },
    "Americas": {
        "USA", "United States", "Canada", "Mexico", "Brazil", "Argentina", "Colombia", "Peru", "Chile",
    },
}  # fmt: skip


def find_metadata(data_dir: Path) -> Path:
    for name in METADATA_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(
        f"{data_dir}: no metadata.csv; --data-dir must be a folder in the layout of the COVID-19 image "
        "data collection (metadata.csv + images/)"
    )


def read_metadata(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # exports from Excel on Windows
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise DataError(f"{path}: no rows")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise DataError(f"{path}: column(s) {', '.join(missing)} missing; the collection's schema has them")
    return rows


def country(location: str) -> str:
    parts = [p.strip() for p in location.split(",") if p.strip()]
    return parts[-1] if parts else "unknown"


def region(name: str) -> str:
    return next((r for r, members in REGIONS.items() if name in members), "other")


def assign_sites(countries: list[str], min_site_size: int) -> dict[str, str]:
    """country -> site name: big countries stay, small ones merge into their region, then into other."""
    counts: dict[str, int] = defaultdict(int)
    for c in countries:
        counts[c] += 1
    site = {c: c if n >= min_site_size and c != "unknown" else region(c) for c, n in counts.items()}
    per_site: dict[str, int] = defaultdict(int)
    for c, n in counts.items():
        per_site[site[c]] += n
    return {c: s if per_site[s] >= min_site_size else "other" for c, s in site.items()}


def slug(name: str) -> str:
    return "site_" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def split_by_patient(rows: list[dict[str, str]], rng: np.random.Generator) -> dict[str, str]:
    """filename -> train|test, whole patients at a time, about TEST_SHARE of the images in test."""
    by_patient: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_patient[r["patientid"]].append(r["filename"])
    patients = sorted(by_patient)
    order = rng.permutation(len(patients))
    target = max(1, round(TEST_SHARE * len(rows))) if len(patients) > 1 else 0
    split, in_test = {}, 0
    for i in order:
        files = by_patient[patients[i]]
        go_test = in_test < target and in_test + len(files) <= max(target, 1) + 1
        in_test += len(files) if go_test else 0
        split.update({f: "test" if go_test else "train" for f in files})
    return split


def tabular_cell(row: dict[str, str]) -> str:
    """age and sex as the tabular modality (`age=54;sex=M`); empty when both are unknown."""
    age, sex = row.get("age", "").strip(), row.get("sex", "").strip().upper()
    try:
        age = f"{float(age):g}" if age else ""
    except ValueError:
        age = ""  # the collection has a few free-text ages; unknown is better than wrong
    parts = ([f"age={age}"] if age else []) + ([f"sex={sex}"] if sex in ("M", "F") else [])
    return ";".join(parts)


def _write(root: Path, data_dir: Path, seed: int, min_site_size: int, include_ct: bool) -> list[Path]:
    meta = find_metadata(data_dir)
    modalities = ("X-ray", "CT") if include_ct else ("X-ray",)
    rows, seen, skipped = [], set(), []
    for line, r in enumerate(read_metadata(meta), start=2):
        if r["modality"].strip() not in modalities:
            continue
        name = r["filename"].strip()
        if name in seen:  # the collection lists a few images under two patient ids
            skipped.append((line, name, "image listed twice; the first row is kept"))
            continue
        if not r["finding"].strip():
            skipped.append((line, name, "empty finding (no label)"))
            continue
        if not (data_dir / "images" / name).is_file():
            skipped.append((line, name, f"images/{name} not found"))
            continue
        seen.add(name)
        rows.append(r)
    if not rows:
        raise DataError(f"{meta}: no usable {' or '.join(modalities)} rows with an image in images/")
    site_of = assign_sites([country(r["location"]) for r in rows], min_site_size)
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_site[site_of[country(r["location"])]].append(r)
    sites = []
    for name in sorted(by_site):
        site = root / slug(name)
        (site / "images").mkdir(parents=True, exist_ok=True)
        split = split_by_patient(by_site[name], rng)
        manifest = []
        for r in by_site[name]:
            stem = Path(r["filename"]).stem
            target = site / "images" / f"{stem}.png"
            with Image.open(data_dir / "images" / r["filename"]) as img:
                img = img.convert("L")
                img.thumbnail((MAX_SIDE, MAX_SIDE))
                img.save(target)
            manifest.append(
                {
                    "id": stem,
                    "label": "covid-19" if "covid-19" in r["finding"].lower() else "other",
                    "split": split[r["filename"]],
                    "image": f"images/{stem}.png",
                    "text": " ".join(r["clinical_notes"].split()),
                    "tabular": tabular_cell(r),
                    "patient_id": r["patientid"],
                    "location": r["location"].strip(),
                    "finding": r["finding"].strip(),
                    "xray_view": r.get("view", "").strip(),
                }
            )
        write_manifest(site, manifest, labels=LABELS)
        sites.append(site)
    with (root / "skipped_rows.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["line", "filename", "reason"])
        writer.writerows(skipped)
    return sites


def generate_covid_cxr(
    root: Path, data_dir: Path, seed: int = 0, min_site_size: int = 20, include_ct: bool = False
) -> list[Path]:
    """Site directories under `root`, built once per (data_dir, seed, min_site_size, include_ct)."""
    data_dir = Path(data_dir)
    read_metadata(find_metadata(data_dir))  # fail early, before creating anything, if the data dir is wrong
    settings = {
        "scenario": "covid-cxr",
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "min_site_size": min_site_size,
        "include_ct": include_ct,
    }
    sites = build_once(
        Path(root), settings, lambda tmp: _write(tmp, data_dir, seed, min_site_size, include_ct)
    )
    if len(sites) < 3:
        raise DataError(
            f"{data_dir}: only {len(sites)} site(s) after merging small locations; a federation needs "
            "at least 3 (lower min_site_size or add data)"
        )
    return sites


def build_sites(request) -> tuple[list[Path], None]:
    """mmfed.data.scenarios.BUILTINS' entry point."""
    return generate_covid_cxr(request.root("covid-cxr"), request.data_dir, seed=request.seed), None
