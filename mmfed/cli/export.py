"""`mmfed export`: the global model as ONNX, int8 and pruned files for the sites' hardware, each measured
against the float model (size, CPU latency, accuracy on the sites' test records). The work is in
mmfed.use.export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from mmfed.cli.common import console
from mmfed.errors import MMFedError
from mmfed.screens import fail
from mmfed.use.variant_names import DEFAULT


def _ms(row: dict[str, Any], size: str) -> str:
    value = row["latency_ms"].get(size)
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _size(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count}B"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _table(report: dict[str, Any]) -> Table:
    """Fits 80 columns: size, × smaller (file, zipped file), ms at batch 1 and 32, × faster at 32."""
    table = Table(
        title=f"mmfed export: {report['model']['task']}",
        title_justify="left",
        box=box.SIMPLE,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("variant", no_wrap=True)
    for name in ("size", "smaller", "zipped", "b1 ms", "b32 ms", "faster", "acc.", "Δ pts"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in report["variants"]:
        delta = row["accuracy_delta"]
        table.add_row(
            row["variant"],
            _size(row["bytes"]),
            _x(row["size_ratio"]),
            _x(row["compressed_ratio"]),
            _ms(row, "1"),
            _ms(row, "32"),
            _x(row["speedup"].get("32")),
            "-" if row["accuracy"] is None else f"{row['accuracy']:.1%}",
            "-" if delta is None else f"{delta:+.1f}",
        )
    return table


def export(
    model: Annotated[
        Path,
        typer.Option(
            help="the model: a round checkpoint (.safetensors), a federation's run directory (its last "
            "complete round) or a `mmfed train` run directory"
        ),
    ],
    out: Annotated[Path, typer.Option(help="new or empty folder for the exported files and the report")],
    task: Annotated[
        Path | None,
        typer.Option(help="task.toml to read the model and the sites with (default: the checkpoint's)"),
    ] = None,
    test_site: Annotated[
        list[Path] | None,
        typer.Option(help="site directory whose test split measures every variant (repeatable)"),
    ] = None,
    variants: Annotated[
        str,
        typer.Option(
            help="comma list of float, onnx, int8, int8-static, pruneN, pruneN-structured (N: 1-99, the "
            "percent of the Conv/Linear weights, or of each layer's output channels when structured)"
        ),
    ] = DEFAULT,
    device: Annotated[
        str, typer.Option(help="where torch computes the reference predictions: auto, cpu, cuda, cuda:N")
    ] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads for torch and onnxruntime while timing")] = 1,
    repeats: Annotated[int, typer.Option(help="timed runs of each variant per batch size")] = 20,
) -> None:
    """Export the model quantised and pruned for the sites' hardware: each variant's size, CPU latency
    (batch 1 and 32) and accuracy against the float model; report.json and a model card beside them."""
    from mmfed.use.export import ExportSettings, export_model

    settings = ExportSettings(
        model=model,
        out=out,
        task=task,
        test_sites=tuple(test_site or ()),
        variants=variants,
        device=device,
        threads=threads,
        repeats=repeats,
    )
    try:
        with console.status("exporting") as status:
            report = export_model(settings, lambda text: status.update(escape(text)))
    except MMFedError as exc:
        fail(exc)
    console.print(_table(report))
    test = report["test"]
    where = (
        f"{test['examples']} test records of {', '.join(test['sites'])}"
        if test
        else "no test records (give --test-site to measure accuracy)"
    )
    console.print(
        f"smaller, zipped: file size (and zlib-compressed size) against the float checkpoint; faster: at "
        f"batch 32 against float torch; latency: median of {repeats} interleaved runs on {threads} CPU "
        f"thread(s); accuracy on {where}",
        markup=False,
        highlight=False,
    )
    console.print(f"results: {out}/  (report.json, model_card.md, model_card.json)", markup=False)
