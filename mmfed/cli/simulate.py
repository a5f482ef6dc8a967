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
        cfg = _initial_model(cfg)
    except (MMFedError, FloatingPointError) as exc:  # FloatingPointError: pretraining diverged
        fail(exc)
    console.print(
        f"[bold]{cfg.scenario}[/]: {cfg.sites} sites, {cfg.rounds} rounds, {cfg.fusion} fusion, "
        f"partition {escape(cfg.partition)}"
        + (", SecAgg+" if cfg.secure_aggregation else "")
        + (f", DP (target ε {cfg.target_epsilon:g} per site)" if cfg.target_epsilon else "")
        + (", DP" if cfg.private and not cfg.target_epsilon else "")
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


def _initial_model(cfg):
    """`initial-model = pretrained:NAME`: the cached public model (trained first, with a progress bar, when
    this is the first run that needs it), and a line saying what the run starts from."""
    from mmfed.cli.train import _progress as train_progress
    from mmfed.server.prepare import resolve_initial_model
    from mmfed.train.pretrained import is_pretrained

    name = cfg.initial_model
    if not is_pretrained(name):
        return cfg
    bar, hooks = train_progress()
    with bar:
        cfg, found = resolve_initial_model(
            cfg, on_train=lambda line: bar.console.print(line, highlight=False, markup=False), progress=hooks
        )
    summary = found.summary
    console.print(
        f"initial model: {name}, {'trained now' if found.trained else 'cached'} "
        f"({summary['public_test_accuracy']:.2%} on its {summary['public_test_examples']} public test "
        "examples)" + ("; the sites train only its fusion + classifier" if cfg.freeze_encoders else ""),
        highlight=False,
        markup=False,
    )
    return cfg


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
        _print_audited_epsilon(cfg, summary)
    elif not cfg.private:
        console.print("no differential privacy in this run (give --target-epsilon or --noise-multiplier)")
    plots = [p for p in ("global_metrics.png", "site_accuracy.png") if (Path(cfg.run_dir) / p).is_file()]
    console.print(
        f"results: {cfg.run_dir}/ ({', '.join(['metrics.jsonl', 'summary.json', 'checkpoints/', *plots])})"
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


def _print_audited_epsilon(cfg, summary: dict) -> None:
    """After a private run: each site's ε as its ledger records it, audited from outside (hash chain,
    every signature, the server's anchors, ε recomputed by dp-accounting: `mmfed audit STATE_DIR --anchors
    RUN_DIR --thorough`), and the verdict. Without a readable state dir: the sites' own reports."""
    from mmfed.audit.check import audit_run
    from mmfed.audit.report import print_verdict

    try:
        audits, anchors = audit_run(Path(cfg.state_dir), Path(cfg.run_dir))
    except MMFedError as exc:
        _print_site_epsilon(summary)
        console.print(f"[bold red]audit FAILED[/]: {escape(str(exc))}", highlight=False)
        return
    title = f"privacy spent per site (cumulative), audited from its ledger in {cfg.state_dir}"
    for site, reason in sorted(summary.get("sites_refused", {}).items()):
        console.print(f"refused: {site}: {reason}", highlight=False, markup=False)
    console.print(
        f"max ε over sites: {summary['epsilon_prv_max']:.3f} (PRV), {summary['epsilon_rdp_max']:.3f} (RDP)"
    )
    print_verdict(audits, console, title, anchors)
