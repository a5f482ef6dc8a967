"""`mmfed evaluate` and `mmfed predict`: use a trained model (a federation's round checkpoint or run
directory, or `mmfed train`'s model) on a site's records. The work is in mmfed.use."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mmfed.cli.common import OnBadRow, console
from mmfed.errors import MMFedError
from mmfed.protected import check_target, manifest_files, refuse_protected
from mmfed.screens import fail

ModelOpt = Annotated[
    Path,
    typer.Option(
        help="the model: a round checkpoint (.safetensors), a federation's run directory (its last "
        "complete round) or a `mmfed train` run directory"
    ),
]
TaskOpt = Annotated[
    Path | None,
    typer.Option(help="task.toml to read the model and the sites with (default: the task in the checkpoint)"),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N")]
BatchOpt = Annotated[int, typer.Option(help="records per forward pass")]
PRINTED_ROWS = 50


class Format(StrEnum):
    csv = "csv"
    json = "json"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _load(model: Path, task: Path | None, device: str):
    from mmfed.train.loop import select_device
    from mmfed.use.model_file import load_global_model

    torch_device = select_device(device)  # a bad --device before the model is read
    with console.status(f"loading the model from {escape(str(model))}"):
        return load_global_model(model, task), torch_device


def evaluate(
    site_dirs: Annotated[list[Path], typer.Argument(help="site directories whose records to evaluate on")],
    model: ModelOpt,
    task: TaskOpt = None,
    split: Annotated[str, typer.Option(help="train, val or test")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="new or empty folder for the results (default: runs/eval-TASK-TIME)")
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    on_bad_row: Annotated[
        OnBadRow, typer.Option(help="fail, or skip bad manifest rows (listed in the --out folder)")
    ] = OnBadRow.fail,
) -> None:
    """Evaluate a trained model on sites' records: accuracy, per-class precision/recall/F1, confusion
    matrix, calibration (ECE) and a per-modality ablation, pooled and per site."""
    from mmfed.runs import new_run_dir
    from mmfed.use import evaluate as ev

    try:
        if out is not None:
            ev.check_out_dir(out)  # before the model is even read
        gm, torch_device = _load(model, task, device)
        out = out or new_run_dir("eval", gm.task.name)
        reads = [gm.path, task, *site_dirs, *(f for d in site_dirs for f in manifest_files(Path(d)))]
        refuse_protected(
            "--out", out, reads, folder=True, writes=ev.OUTPUT_FILES, instead="choose another --out"
        )
        ev.check_out_dir(out)
        with ev.undone_on_failure(out):  # a failed evaluation leaves no half-written folder behind
            skip = Path(out) if on_bad_row == OnBadRow.skip else None
            sites = ev.read_sites(gm, site_dirs, split, skip)
            with _bar(sum(len(s.dataset) for s in sites)) as advance:
                report = ev.evaluate_sites(gm, sites, torch_device, split, batch_size, advance)
            ev.write_report(report, out)
    except MMFedError as exc:
        fail(exc)
    _print_evaluation(report)
    console.print(
        f"results: {out}/  ({', '.join(ev.OUTPUT_FILES)})", markup=False, highlight=False, soft_wrap=True
    )


class _bar:
    """A progress bar over the records (transient: gone once done)."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total = total
        self.progress = Progress(
            TextColumn("records"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task("records", total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _print_evaluation(report: dict[str, Any]) -> None:
    pooled = report["pooled"]
    model = report["model"]
    title = f"{model['task']}: {report['split']} split" + (
        f", round {model['round']}" if "round" in model else ""
    )
    table = Table(title=escape(title))
    for column in ("site", "records", "accuracy", "macro F1", "loss", "ECE"):
        table.add_column(column, justify="left" if column == "site" else "right")
    rows = [(name, s) for name, s in report["sites"].items()]
    if len(rows) > 1 or not rows:
        rows.append(("pooled", pooled))
    for name, s in rows:
        ece = s["calibration"]["ece"] if "calibration" in s else None
        table.add_row(
            escape(name), str(s["examples"]), _pct(s.get("accuracy")), _num(s.get("macro_f1")),
            _num(s.get("loss")), _num(ece),
        )  # fmt: skip
    console.print(table)
    classes = Table(title="per class (pooled)")
    for column in ("label", "precision", "recall", "F1", "support"):
        classes.add_column(column, justify="left" if column == "label" else "right")
    for row in pooled["per_class"]:
        classes.add_row(
            escape(row["label"]), _num(row["precision"]), _num(row["recall"]), _num(row["f1"]),
            str(row["support"]),
        )  # fmt: skip
    console.print(classes)
    ablation = Table(title="each modality masked in turn (pooled)")
    for column in ("masked", "accuracy", "change", "records with it"):
        ablation.add_column(column, justify="left" if column == "masked" else "right")
    ablation.add_row("(none)", _pct(pooled["accuracy"]), "", "")
    for row in pooled["ablation"]:
        change = "-" if row["change"] is None else f"{100 * row['change']:+.1f} pt"
        ablation.add_row(row["masked"], _pct(row["accuracy"]), change, str(row["records_with_modality"]))
    console.print(ablation)
    console.print(
        f"calibration: {report['conventions']['calibration']}", markup=False, highlight=False, soft_wrap=True
    )
    empty = [name for name, s in report["sites"].items() if not s["examples"]]
    if empty:
        console.print(f"[yellow]no {report['split']} records with the model's modalities at: "
                      f"{escape(', '.join(empty))}[/]")  # fmt: skip


def predict(
    model: ModelOpt,
    site: Annotated[
        Path | None, typer.Option(help="a site directory: predict every row of its manifest")
    ] = None,
    split: Annotated[str | None, typer.Option(help="with --site: only this split (train, val, test)")] = None,
    image: Annotated[Path | None, typer.Option(help="one record's image file")] = None,
    audio: Annotated[Path | None, typer.Option(help="one record's audio file")] = None,
    text: Annotated[str | None, typer.Option(help="one record's text (de-identified as in training)")] = None,
    text_file: Annotated[Path | None, typer.Option(help="one record's text, read from a UTF-8 file")] = None,
    video: Annotated[Path | None, typer.Option(help="one record's video file")] = None,
    tabular: Annotated[
        str | None, typer.Option(help='one record\'s tabular values, "name=value,..."')
    ] = None,
    task: TaskOpt = None,
    out: Annotated[Path | None, typer.Option(help="write the predictions here (CSV, or JSON)")] = None,
    format: Annotated[
        Format | None, typer.Option("--format", help="csv or json (default: by --out's suffix, else csv)")
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
) -> None:
    """Predict class probabilities for a site's records (--site) or one record given by its files
    (--image, --audio, --text, --text-file, --video, --tabular); missing modalities are masked."""
    from mmfed.use import predict as pr
    from mmfed.use.inputs import Inputs

    inputs = Inputs(image, audio, video, text, text_file, tabular)
    fmt = (format.value if format else None) or ("json" if out and out.suffix.lower() == ".json" else "csv")
    try:
        if site is not None and inputs.any():
            raise MMFedError(
                "--site and single inputs (--image, --audio, --text, ...): give one or the other"
            )
        if split is not None and site is None:
            raise MMFedError("--split applies to --site; leave it out for a single record")
        reads = [model, task, image, audio, video, text_file]
        if site is not None:
            reads += [site, site / "manifest.csv", *manifest_files(site)]
        refuse_protected("--out", out, reads, instead="write the predictions elsewhere")
        check_target("--out", out)
        if out is not None and out.exists():  # earlier predictions are never overwritten
            raise MMFedError(f"--out {out}: exists; choose another --out (nothing was changed)")
        gm, torch_device = _load(model, task, device)
        left_out = 0
        if site is not None:
            rows, left_out = pr.predict_site(gm, site, split, torch_device, batch_size)
        else:
            rows = pr.predict_inputs(gm, inputs, torch_device)
        if out is not None:
            pr.write_predictions(rows, gm, out, fmt)
    except MMFedError as exc:
        fail(exc)
    if out is None and format is not None:
        print(pr.render(rows, gm, fmt), end="")  # asked for a format on stdout: machine-readable, no table
        return
    _print_predictions(rows, gm.labels, out)
    if left_out:
        mods = ", ".join(gm.modalities)
        line = f"{left_out} record(s) hold none of the model's modalities ({mods}): left out"
        console.print(line, markup=False, highlight=False)


def _print_predictions(rows: list[dict[str, Any]], labels: tuple[str, ...], out: Path | None) -> None:
    first = rows[0]
    title = ""
    if "site" in first:
        one_split = len({r["split"] for r in rows}) == 1
        title = first["site"] + (f", {first['split']} split" if one_split else "")
    table = Table(title=escape(title) if title else None)
    keys = [k for k in ("id", "split", "label") if k in first and not (k == "split" and "split" in title)]
    for key in (*keys, "predicted", "confidence", "modalities"):
        table.add_column(key, justify="right" if key == "confidence" else "left", overflow="fold")
    few = len(labels) <= 4
    for name in labels if few else ("top 3",):
        table.add_column(escape(f"p_{name}") if few else name, justify="right" if few else "left")
    for row in rows[:PRINTED_ROWS]:
        probs = row["probabilities"]
        if few:
            shown = [f"{probs[name]:.3f}" for name in labels]
        else:
            top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
            shown = [" ".join(f"{name}:{p:.2f}" for name, p in top)]
        cells = [str(row[k]) for k in keys] + [row["predicted"], f"{row['confidence']:.3f}"]
        table.add_row(*(escape(c) for c in [*cells, row["modalities"], *shown]))
    console.print(table)
    more = len(rows) - PRINTED_ROWS
    if more > 0:
        where = f"all in {out}" if out else "write them all with --out preds.csv"
        console.print(f"... and {more} more rows ({where})", markup=False, highlight=False)
    if out is not None:
        line = f"predictions: {out} ({len(rows)} rows)"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
