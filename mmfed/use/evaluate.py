"""`mmfed evaluate`: a trained model on sites' test records — pooled and per site: accuracy, loss,
per-class precision / recall / F1, the confusion matrix, calibration (ECE, 15 equal-width bins) and a
per-modality ablation (each modality masked in turn).

The output folder (new or empty: an earlier evaluation is never overwritten) holds metrics.json (every
number, with the conventions it follows), confusion.json (the matrices), confusion.png and
reliability.png (the pooled records), and skipped_rows_<site>.csv for rows left out with
on_bad_row="skip".
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mmfed.data.manifest import SPLITS
from mmfed.errors import MMFedError
from mmfed.files import write_atomic
from mmfed.runs import check_new_folder
from mmfed.use import metrics
from mmfed.use.infer import Scores, score
from mmfed.use.model_file import GlobalModel
from mmfed.use.site_data import SiteData, check_site_dir, check_split, read_site, site_names

OUTPUT_FILES = ("metrics.json", "confusion.json", "confusion.png", "reliability.png")
CONVENTIONS = {
    "prediction": "the most probable class; confidence: its probability",
    "confusion": "rows: true class, columns: predicted class (label order as in 'labels')",
    "undefined": "precision of a class never predicted and recall of a class with no record are null; "
    "F1 = 2TP / (2TP + FP + FN), null only for a class neither present nor predicted; macro averages are "
    "over the classes where the metric is defined",
    "calibration": f"expected calibration error over {metrics.CALIBRATION_BINS} equal-width confidence "
    "bins: sum over bins of (records in bin / records) * |accuracy - mean confidence|",
    "ablation": "the same records with one modality masked in every record (presence off, tensors zero, "
    "as for a record that lacks it); change = masked accuracy - unmasked accuracy",
    "loss": "mean cross-entropy (negative log-probability of the true class)",
}


def check_out_dir(out: Path) -> None:
    """Refused now, before the model runs: a file, or a folder that is not empty (nothing is overwritten)."""
    check_new_folder(out, "--out", "an earlier evaluation")


@contextlib.contextmanager
def undone_on_failure(out: Path) -> Iterator[None]:
    """What the evaluation wrote in `out` (new, or empty) is removed again if it fails or is interrupted,
    so that the same --out can be used for the next attempt."""
    out = Path(out)
    created = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)
    try:
        yield
    except BaseException:
        shutil.rmtree(created, ignore_errors=True) if created is not None else _empty(out)
        raise


def _empty(folder: Path) -> None:
    for child in folder.iterdir() if folder.is_dir() else ():
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def read_sites(
    gm: GlobalModel, site_dirs: Sequence[Path], split: str = "test", skip_dir: Path | None = None
) -> list[SiteData]:
    """Every site's records of `split` for the model; all folders checked before any is read. With
    `skip_dir`, bad rows are left out and listed in skipped_rows_<site>.csv there."""
    check_split(split)
    if not site_dirs:
        raise MMFedError("name at least one site directory to evaluate on")
    for site_dir in site_dirs:
        check_site_dir(Path(site_dir))
    names = site_names([Path(d) for d in site_dirs])
    sites = []
    for name, site_dir in zip(names, site_dirs, strict=True):
        report = Path(skip_dir) / f"skipped_rows_{name.replace('#', '-')}.csv" if skip_dir else None
        sites.append(read_site(gm, Path(site_dir), split, name, report))
    if not sum(len(s.dataset) for s in sites):
        listed = ", ".join(str(s.site_dir) for s in sites)
        raise MMFedError(
            f"no {split} records holding any of the model's modalities ({', '.join(gm.modalities)}) in "
            f"{listed}; evaluate on another --split ({', '.join(SPLITS)}) or other sites"
        )
    return sites


def _section(scores: Scores, names: Sequence[str]) -> dict[str, Any]:
    out = metrics.classification(scores.probs, scores.labels, names)
    out["ablation"] = metrics.ablation(
        scores.probs, scores.masked, scores.labels, scores.presence, scores.modalities
    )
    out["records_per_modality"] = {
        m: int(scores.presence[:, i].sum()) for i, m in enumerate(scores.modalities)
    }
    return out


def evaluate_sites(
    gm: GlobalModel,
    sites: Sequence[SiteData],
    device: torch.device,
    split: str = "test",
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The report (what metrics.json holds): the model, conventions, pooled and per-site metrics."""
    names = list(gm.labels)
    per_site: dict[str, Scores] = {}
    for site in sites:
        if len(site.dataset):
            per_site[site.name] = score(
                gm.model, site.dataset, site.collate, device, gm.modalities, gm.modalities, batch_size,
                on_batch,
            )  # fmt: skip
    pooled = Scores.concat(list(per_site.values()), gm.modalities, len(names))
    report: dict[str, Any] = {
        "model": gm.describe(),
        "split": split,
        "device": str(device),
        "labels": names,
        "conventions": CONVENTIONS,
        "pooled": _section(pooled, names),
        "sites": {},
    }
    for site in sites:
        entry: dict[str, Any] = {
            "site_dir": str(site.site_dir),
            "records_without_model_modalities": site.left_out,
        }
        if site.name in per_site:
            entry.update(_section(per_site[site.name], names))
        else:
            entry["examples"] = 0
        report["sites"][site.name] = entry
    return report


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """metrics.json, confusion.json, confusion.png and reliability.png in `out` (created)."""
    from mmfed.use.plots import plot_confusion, plot_reliability

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = report["labels"]
    matrices = {
        "labels": names,
        "rows": "true class",
        "columns": "predicted class",
        "pooled": report["pooled"]["confusion"],
        "sites": {name: s["confusion"] for name, s in report["sites"].items() if "confusion" in s},
    }
    write_atomic(out / "metrics.json", json.dumps(report, indent=2), durable=False)
    write_atomic(out / "confusion.json", json.dumps(matrices, indent=2), durable=False)
    what = f"{report['model']['task']}, {report['split']} split, {report['pooled']['examples']} records"
    plot_confusion(report["pooled"]["confusion"], names, out / "confusion.png", what)
    plot_reliability(report["pooled"]["calibration"], out / "reliability.png", what)
    return [out / name for name in OUTPUT_FILES]


def evaluate_model(
    gm: GlobalModel,
    site_dirs: Sequence[Path],
    out: Path,
    split: str = "test",
    device: torch.device | None = None,
    batch_size: int = 64,
    skip_bad_rows: bool = False,
) -> dict[str, Any]:
    """Read the sites, evaluate, write the output folder; returns the report."""
    check_out_dir(out)
    with undone_on_failure(out):
        sites = read_sites(gm, site_dirs, split, Path(out) if skip_bad_rows else None)
        report = evaluate_sites(gm, sites, device or torch.device("cpu"), split, batch_size)
        write_report(report, out)
    return report
