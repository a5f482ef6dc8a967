"""`mmfed task ...`: draft a task.toml from a site's manifest, check site directories against a task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mmfed.cli.common import console
from mmfed.data.site_files import check_site_files
from mmfed.errors import MMFedError
from mmfed.protected import manifest_files, refuse_protected
from mmfed.screens import App, fail

task_app = App(help="A federation's task file: labels, modalities, tensor settings, model, columns.")


@task_app.command("init")
def task_init(
    from_site: Annotated[Path, typer.Option("--from-site", help="a site directory whose manifest to read")],
    out: Annotated[Path, typer.Option(help="the task file to write (never overwritten)")] = Path("task.toml"),
    name: Annotated[str | None, typer.Option(help="the task's name [the site directory's name]")] = None,
) -> None:
    """Draft a task.toml from one site's manifest.csv; prints every guess it made, for you to review."""
    from mmfed.data.task_sites import draft_task
    from mmfed.files import write_atomic

    try:
        check_site_files(from_site)
        refuse_protected("--out", out, [from_site / "manifest.csv", *manifest_files(from_site)],
                         instead="choose another --out")  # fmt: skip
        if out.exists():
            raise MMFedError(f"{out} exists; choose another --out (nothing was changed)")
        task, notes = draft_task(from_site, name or from_site.resolve().name)
        header = "".join(f"# {note}\n" for note in ["draft by mmfed task init: review before use", *notes])
        write_atomic(out, header + "\n" + task.to_toml())
    except MMFedError as exc:
        fail(exc)
    console.print(f"wrote {escape(str(out))}: {len(task.labels)} labels, {', '.join(task.modalities)}")
    for note in notes:
        console.print(f"  - {escape(note)}")
    console.print(f"next: mmfed task check {escape(str(out))} SITE_DIR ...", highlight=False)


@task_app.command("check")
def task_check(
    task_file: Annotated[Path, typer.Argument(help="the task.toml")],
    sites: Annotated[list[Path], typer.Argument(help="site directories")],
) -> None:
    """Read every site through the task: records per split and modality, and every problem."""
    from mmfed.data.task_sites import check_sites
    from mmfed.task import load_task

    try:
        task = load_task(task_file)
        for site in sites:
            check_site_files(site)
    except MMFedError as exc:
        fail(exc)
    checks = check_sites(task, sites)
    table = Table(title=escape(f"{task.name}: {', '.join(task.labels)}"))
    for column in ("site", "train", "val", "test", *task.modalities, "problems"):
        table.add_column(column)
    for check in checks:
        splits = [str(check.records.get(s, 0)) for s in ("train", "val", "test")]
        counts = [str(check.modalities.get(m, 0)) for m in task.modalities]
        table.add_row(escape(check.site.name), *splits, *counts, str(len(check.problems)))
    console.print(table)
    for check in checks:
        for problem in check.problems:
            console.print(f"[red]{escape(check.site.name)}[/]: {escape(problem)}")
    if any(c.problems for c in checks):
        raise typer.Exit(1)
    console.print(f"[green]every site fits {escape(task.name)}[/] (approval {task.approval()})")
