"""`mmfed data ...`: check a site directory, preview its de-identified text, build scenario sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mmfed.cli.common import CacheOpt, DataDirOpt, OnBadRow, ScenarioOpt, console, prepared_scenario
from mmfed.data.manifest import FILE_MODALITIES
from mmfed.data.site_files import SITE_FILES, check_site_files, load_site_manifest
from mmfed.errors import MMFedError
from mmfed.protected import manifest_files, refuse_cache_dir, refuse_protected
from mmfed.screens import App, fail

data_app = App(help="Site data: check a site directory, build scenario site directories.")


@data_app.command("check")
def data_check(
    site_dir: Path,
    on_bad_row: OnBadRow = OnBadRow.fail,
    report: Annotated[
        Path | None, typer.Option(help="where skip writes its report [SITE_DIR/../NAME-skipped.csv]")
    ] = None,
) -> None:
    """Validate a site directory's manifest.csv and every file it names; list every problem."""
    from mmfed.data import manifest as manifests

    if report is None:  # `data check .` or `data check ..`: named after the folder, next to it
        named = site_dir if site_dir.name not in ("", ".", "..") else site_dir.resolve()
        report = named.parent / f"{named.name}-skipped.csv"
    try:
        check_site_files(site_dir)
        site_files = [site_dir / name for name in SITE_FILES]
        refuse_protected("--report", report, [*site_files, *manifest_files(site_dir)])
        manifest = manifests.load_manifest(site_dir, on_bad_row=on_bad_row.value, report_path=report)
    except MMFedError as exc:
        fail(exc)
    table = Table(title=escape(str(site_dir)))  # paths and labels are text, never markup
    for col in ("split", "samples", *manifest.modality_counts().keys()):
        table.add_column(col)
    for split in ("train", "val", "test"):
        rows = manifest.split(split)
        if rows:
            counts = [str(sum(getattr(s, m) is not None for s in rows)) for m in manifest.modality_counts()]
            table.add_row(split, str(len(rows)), *counts)
    console.print(table)
    console.print(f"labels ({len(manifest.labels)}): {', '.join(manifest.labels)}", markup=False)
    if manifest.skipped:
        console.print(f"[yellow]{len(manifest.skipped)} bad row(s) skipped; report: {escape(str(report))}[/]")
    else:
        console.print("[green]no problems found[/]")
    files = sum(getattr(s, m) is not None for s in manifest.samples for m in FILE_MODALITIES)
    line = f"{files} file(s) decoded in full, within {_limits(site_dir)}"
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _limits(site_dir: Path) -> str:
    from mmfed.data.limits import KEYS, site_limits

    limits = site_limits(site_dir)
    shown = ", ".join(limits.setting(key).split(",")[0].removeprefix("data.") for key in KEYS)
    source = f"{limits.source} [data]" if limits.given else "the defaults (no [data] table in site.toml)"
    return f"{source}: {shown}"


@data_app.command("deid")
def data_deid(
    site_dir: Path,
    mask_diagnosis: Annotated[
        bool, typer.Option(help="also apply the label-leak guard (diagnosis terms -> [DIAGNOSIS])")
    ] = False,
    show: Annotated[int, typer.Option(help="how many changed notes to print before/after")] = 5,
) -> None:
    """Preview what the model will see of a site's text: identifiers found per class, and examples."""
    from collections import Counter

    from mmfed.data.deid import find_identifiers, scrub

    try:
        manifest = load_site_manifest(site_dir)
    except MMFedError as exc:
        fail(exc)
    notes = [s for s in manifest.samples if s.text]
    found: Counter[str] = Counter()
    changed = []
    for sample in notes:
        found.update(f.kind for f in find_identifiers(sample.text))
        cleaned = scrub(sample.text, mask_label_terms=mask_diagnosis)
        if cleaned != sample.text:
            changed.append((sample, cleaned))
    console.print(
        f"{site_dir}: {len(notes)} notes, {len(changed)} changed; identifiers found: "
        + (", ".join(f"{k} {n}" for k, n in found.most_common()) or "none"),
        highlight=False,
    )
    for sample, cleaned in changed[:show]:
        console.print(f"\n[bold]{escape(sample.id)}[/] (row {sample.row})", highlight=False)
        console.print(f"  before: {sample.text}", highlight=False, markup=False)
        console.print(f"  after:  {cleaned}", highlight=False, markup=False)


@data_app.command("prepare")
def data_prepare(
    scenario: ScenarioOpt = "digits-av",
    data_dir: DataDirOpt = None,
    cache_dir: CacheOpt = None,
    seed: int = 0,
) -> None:
    """Build a scenario's site directories (once) and the task.toml they hold; print where they are.

    `mmfed simulate --task TASK --site-dirs SITE,...` then trains them as any consortium's own sites."""
    from mmfed.data.scenarios import write_task_file

    refuse_cache_dir(cache_dir)
    try:
        scen = prepared_scenario(scenario, data_dir, cache_dir, None, seed)
        sites = [scen.site(i) for i in range(len(scen.sites))]  # synthetic sites are written on first use
        task_file = write_task_file(scen)
    except MMFedError as exc:
        fail(exc)
    for site in sites:
        console.print(str(site), markup=False)
    console.print(f"task: {task_file}", markup=False)
