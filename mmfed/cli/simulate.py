"""`mmfed simulate`: a federation on Flower's simulation engine. Its run-setting options are generated
from the settings' declaration (mmfed.federation.settings): a new setting is an option here by itself."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mmfed.cli.common import console
from mmfed.errors import MMFedError
from mmfed.federation.settings import option_parameters
from mmfed.screens import fail

SIMULATION = "Simulation"  # the --help panel of the options that are not run settings


def _with_setting_options(command):
    """The command's own options, then one per run setting (typer reads the signature)."""
    own = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    command.__signature__ = inspect.Signature([*own, *option_parameters()])
    return command


@_with_setting_options
def simulate(
    config: Annotated[
        Path | None,
        typer.Option(help="scenario file, e.g. simulations/fsdd-mnist.toml", rich_help_panel=SIMULATION),
    ] = None,
    cpus_per_site: Annotated[
        float, typer.Option(help="CPUs Ray reserves per simulated site", rich_help_panel=SIMULATION)
    ] = 1.0,
    gpus_per_site: Annotated[
        float,
        typer.Option(help="GPU fraction per site, e.g. 0.25 = 4 sites per GPU", rich_help_panel=SIMULATION),
    ] = 0.0,
    ray_address: Annotated[
        str | None,
        typer.Option(help="attach to a running Ray cluster (e.g. auto)", rich_help_panel=SIMULATION),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's own logs", rich_help_panel=SIMULATION)] = False,
    **settings: Any,
) -> None:
    """Run a simulated federation: Flower's simulation engine, the ServerApp and ClientApp of deployment.
    Options override the --config file's settings (docs/reference/settings.md)."""
    from mmfed.server import simulation
    from mmfed.server.prepare import check_resources, prepare_simulation

    try:
        check_resources(cpus_per_site, gpus_per_site, ray_address)
        cfg = prepare_simulation(config, {k: v for k, v in settings.items() if v is not None})
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"[bold]{cfg.scenario}[/]: {cfg.sites} sites, {cfg.rounds} rounds, {cfg.fusion} fusion, "
        f"partition {escape(cfg.partition)}"
        + (", SecAgg+" if cfg.secure_aggregation else "")
        + (", DP" if cfg.private else "")
        + f"; results in {escape(cfg.run_dir)}",
        highlight=False,
    )
    bar, on_round = _progress(cfg)
    try:
        with bar:
            summary = simulation.simulate(
                cfg,
                cpus_per_site=cpus_per_site,
                gpus_per_site=gpus_per_site,
                ray_address=ray_address,
                on_round=on_round,
                verbose=verbose,
            )
    except MMFedError as exc:  # anything else is a bug: _guarded logs it, the screen gets one line
        fail(exc)
    _print_summary(cfg, summary)


def _progress(cfg):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("round"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = bar.add_task("rounds", total=cfg.rounds)

    def on_round(row: dict) -> None:
        bar.update(task, completed=row["round"])
        bar.console.print(
            f"round {row['round']:>3}  accuracy {row['accuracy']:7.2%}  loss {row['loss']:.4f}  "
            # SecAgg+: the sites' summed evaluation arrives a round late (README, "What the server learns")
            + (f"(model {row['evaluated_model_round']})  " if "evaluated_model_round" in row else "")
            + f"sites {row.get('sites_accepted', 0)}/{cfg.sites}"
            + (f" ({row['sites_rejected']} rejected)" if row.get("sites_rejected") else "")
            + (f" ({row['sites_failed']} failed)" if row.get("sites_failed") else "")
            + (f" ({row['sites_refused']} refused)" if row.get("sites_refused") else "")
            + (f"  ε max {row['epsilon_prv_max']:.3f}" if "epsilon_prv_max" in row else "")
            + f"  {row['seconds']:5.1f}s",
            highlight=False,
        )

    return bar, on_round


def _print_summary(cfg, summary: dict) -> None:
    if not summary:
        fail(MMFedError(f"the simulation ended without a result; see {cfg.run_dir} and rerun with --verbose"))
    acc = summary.get("global_accuracy")
    console.print(
        f"[bold green]global accuracy {acc:.2%}[/] after {summary['rounds_completed']} rounds"
        if acc is not None
        else "no round completed"
    )
    if summary.get("site_epsilon"):
        _print_site_epsilon(summary)
    elif not cfg.private:
        console.print("no differential privacy in this run (give --target-epsilon or --noise-multiplier)")
    console.print(
        f"results: {cfg.run_dir}/ (metrics.jsonl, summary.json, checkpoints/, "
        "global_metrics.png, site_accuracy.png)"
    )


def _print_site_epsilon(summary: dict) -> None:
    table = Table(title="privacy spent per site (cumulative over every run on the same data)")
    for column in ("site", "ε (PRV)", "ε (RDP)", "δ", "refused"):
        table.add_column(column)
    refused = summary.get("sites_refused", {})
    for site, eps in sorted(summary["site_epsilon"].items()):
        table.add_row(
            site,
            f"{eps['epsilon_prv']:.3f}",
            f"{eps['epsilon_rdp']:.3f}",
            f"{eps['delta']:g}",
            refused.get(site, ""),
        )
    for site in sorted(set(refused) - set(summary["site_epsilon"])):
        table.add_row(site, "-", "-", "-", refused[site])
    console.print(table)
    console.print(
        f"max ε over sites: {summary['epsilon_prv_max']:.3f} (PRV), {summary['epsilon_rdp_max']:.3f} (RDP)"
    )
