"""A site directory read for a trained model, as a site reads it in training: its manifest through the
model's task (columns, class order), its text preprocessed with the model's de-identification settings
and whatever its own site.toml adds, each record turned into tensors by the same Processors and Collate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmfed.data.dataset import Collate, MultimodalDataset, Processors
from mmfed.data.manifest import LABELS_NAME, MANIFEST_NAME, SPLITS, Sample, load_manifest, read_labels
from mmfed.errors import ManifestError, MMFedError
from mmfed.use.model_file import GlobalModel


@dataclass
class SiteData:
    """One site's records for the model: the dataset (only records with a modality the model has) and
    its collate; `left_out`: records of the split that hold none of the model's modalities."""

    name: str
    site_dir: Path
    dataset: MultimodalDataset
    collate: Collate
    left_out: int

    @property
    def samples(self) -> list[Sample]:
        return self.dataset.samples


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise MMFedError(f"--split {split!r}: use one of {', '.join(SPLITS)}")


def check_site_dir(site_dir: Path) -> None:
    """Named now, before the model works: a missing folder, a file, a folder without a manifest."""
    site_dir = Path(site_dir)
    if not site_dir.exists():
        raise MMFedError(f"{site_dir}: no such site directory; give a folder holding {MANIFEST_NAME}")
    if not site_dir.is_dir():
        raise MMFedError(f"{site_dir}: is a file; give the site's folder (the one holding {MANIFEST_NAME})")
    if not (site_dir / MANIFEST_NAME).is_file():
        raise MMFedError(
            f"{site_dir}: no {MANIFEST_NAME} in it; give a site directory (see `mmfed data check`)"
        )


def site_samples(
    gm: GlobalModel, site_dir: Path, split: str | None, skip_report: Path | None = None
) -> list[Sample]:
    """The site's records of `split` (all when None), labelled in the model's class order; a site whose
    labels.txt names other classes is refused with both lists (its labels would mean something else).
    Bad rows fail, naming every one; with `skip_report` they are left out and listed there."""
    check_site_dir(site_dir)
    if (site_dir / LABELS_NAME).exists() and read_labels(site_dir) != list(gm.labels):
        raise MMFedError(
            f"{site_dir / LABELS_NAME} lists {read_labels(site_dir)} but the model ({gm.task.name}) predicts "
            f"{list(gm.labels)}; use a model trained for these classes, or fix labels.txt"
        )
    on_bad_row = "skip" if skip_report is not None else "fail"
    try:
        manifest = load_manifest(
            site_dir, on_bad_row, skip_report, labels=list(gm.labels), columns=gm.task.columns
        )
    except ManifestError as exc:
        if skip_report is not None or not exc.problems:
            raise
        shown = "\n".join(f"  - {p}" for p in exc.problems[:20])
        more = f"\n  ... and {len(exc.problems) - 20} more" if len(exc.problems) > 20 else ""
        raise MMFedError(
            f"{exc.manifest}: {len(exc.problems)} problem(s) found:\n{shown}{more}\n"
            f"Fix these rows (`mmfed data check {site_dir}` lists them all)."
        ) from None
    return manifest.samples if split is None else manifest.split(split)


def processors(gm: GlobalModel, site_dir: Path | None = None) -> Processors:
    """The per-modality processors for the model, with the text settings `gm.data_spec` gives the site."""
    return Processors(gm.data_spec(site_dir), gm.modalities)


def dataset(gm: GlobalModel, samples: list[Sample], site_dir: Path | None = None) -> MultimodalDataset:
    return MultimodalDataset(samples, processors(gm, site_dir))


def read_site(
    gm: GlobalModel,
    site_dir: Path,
    split: str | None,
    name: str | None = None,
    skip_report: Path | None = None,
) -> SiteData:
    samples = site_samples(gm, Path(site_dir), split, skip_report)
    data = dataset(gm, samples, Path(site_dir))
    collate = Collate(gm.task.data, gm.modalities)
    return SiteData(name or Path(site_dir).name, Path(site_dir), data, collate, data.dropped_no_modality)


def site_names(site_dirs: list[Path]) -> list[str]:
    """Each site's folder name; folders of the same name get their position added (site_0, site_0#2)."""
    names = [Path(d).resolve().name or str(d) for d in site_dirs]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return out
