"""`mmfed` command line (typer + rich). Commands only parse options and print; the work is in modules."""

from __future__ import annotations

import csv
import io
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmfed.errors import MMFedError
from mmfed.protected import manifest_files, refuse_cache_dir, refuse_protected
from mmfed.screens import App, fail

console = Console()


app = App(help="Federated, privacy-preserving multimodal learning.", no_args_is_help=True)
data_app = App(help="Site data: check a site directory, build scenario site directories.")
app.add_typer(data_app, name="data")
site_app = App(help="A data-holding site: its privacy policy, signing key and budget.")
app.add_typer(site_app, name="site")
certs_app = App(help="Deployment certificates and keys: CA, SuperLink TLS, SuperNode auth keys.")
app.add_typer(certs_app, name="certs")


class Fusion(StrEnum):
    early = "early"
    late = "late"
    attention = "attention"


class OnBadRow(StrEnum):
    fail = "fail"
    skip = "skip"


ScenarioOpt = Annotated[
    str,
    typer.Option(help="digits-av (embedded); fsdd-mnist, covid-cxr, grid-av (need --data-dir); synthetic"),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="folder with the real data a scenario reads (fsdd-mnist, covid-cxr, grid-av)"),
]
CacheOpt = Annotated[
    Path | None, typer.Option(help="where scenarios and features are cached [$MMFED_CACHE_DIR]")
]


def _check_site_files(site_dir: Path) -> None:
    """Undecodable or unparsable manifest.csv, labels.txt, site.toml -> a message naming the file and
    line. Read here first because the csv/codec errors name neither (and hold the text around the bad
    byte)."""
    for name in ("manifest.csv", "labels.txt", "site.toml"):
        path = site_dir / name
        if not path.is_file():
            continue  # load_manifest says what is missing
        data = path.read_bytes()
        excel = " (Excel: CSV UTF-8)" if path.suffix == ".csv" else ""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            utf16 = "it is UTF-16; " if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
            raise MMFedError(f"{path}, line {line}: not UTF-8 text; {utf16}save it as UTF-8{excel}") from None
        if "\0" in text:  # UTF-16 without a byte-order mark decodes, as text full of NULs
            line = text.count("\n", 0, text.index("\0")) + 1
            raise MMFedError(f"{path}, line {line}: holds NUL bytes (UTF-16?); save it as UTF-8{excel}")
        if name == "manifest.csv":
            reader = csv.reader(io.StringIO(text, newline=""))
            try:
                for _ in reader:
                    pass
            except csv.Error as exc:
                problem = (
                    f"a cell is longer than {csv.field_size_limit()} characters; shorten that text"
                    if "field limit" in str(exc)
                    else f"not readable as CSV ({exc})"
                )
                raise MMFedError(f"{path}, line {reader.line_num}: {problem}") from None


def _load_manifest(site_dir: Path, **kwargs):
    from mmfed.data.manifest import load_manifest

    _check_site_files(site_dir)
    return load_manifest(site_dir, **kwargs)


def _scenario(
    name: str, data_dir: Path | None, cache_dir: Path | None, site_dirs: list[Path] | None, seed: int
):
    from mmfed.data.scenarios import from_site_dirs, prepare_scenario

    if site_dirs:
        return from_site_dirs(site_dirs)
    with console.status(f"preparing scenario {name} (built once, then cached)"):
        return prepare_scenario(name, data_dir=data_dir, cache_dir=cache_dir, seed=seed)


@app.command()
def train(
    scenario: ScenarioOpt = "digits-av",
    data_dir: DataDirOpt = None,
    site_dir: Annotated[
        list[Path] | None, typer.Option(help="train on your own site directory (repeatable)")
    ] = None,
    modalities: Annotated[
        str | None, typer.Option(help="comma list, e.g. image,audio [all the data has]")
    ] = None,
    fusion: Fusion = Fusion.attention,
    image_encoder: Annotated[str, typer.Option(help="cnn or resnet18")] = "cnn",
    text_encoder: Annotated[
        str, typer.Option(help="bert-small or minilm (pretrained, offline)")
    ] = "bert-small",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    augment: Annotated[bool, typer.Option(help="audio/image augmentation while training")] = True,
    modality_dropout: Annotated[
        float, typer.Option(help="chance of hiding one modality of a training sample")
    ] = 0.3,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N")] = "auto",
    on_bad_row: Annotated[
        OnBadRow, typer.Option(help="fail, or skip bad manifest rows (report in run dir)")
    ] = OnBadRow.fail,
    run_dir: Annotated[Path | None, typer.Option(help="new directory for results [runs/train-...]")] = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Centralised baseline: pool all sites' data, train, evaluate on the test split."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mmfed.config import TrainConfig
    from mmfed.train.centralized import Progress as Hooks
    from mmfed.train.centralized import train_centralized

    run_dir = (
        run_dir
        or Path("runs") / f"train-{scenario if not site_dir else 'sites'}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    refuse_protected("--run-dir", run_dir, folder=True, instead="choose another --run-dir")
    refuse_cache_dir(cache_dir)
    try:
        for site in site_dir or []:
            _check_site_files(site)
        scen = _scenario(scenario, data_dir, cache_dir, site_dir, seed)
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            augment=augment,
            modality_dropout=modality_dropout,
            device=device,
        )
        bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        )
        state: dict = {}

        def on_start(n_epochs: int, batches: int) -> None:
            state["task"] = bar.add_task("train", total=n_epochs * batches, epoch=f"1/{n_epochs}", info="")
            state["epochs"] = n_epochs

        def on_epoch(epoch: int, row: dict) -> None:
            info = f"loss {row['train_loss']:.3f}  test acc {row['test_accuracy']:.2%}"
            bar.update(state["task"], epoch=f"{min(epoch + 1, state['epochs'])}/{state['epochs']}", info=info)
            console.print(
                f"epoch {epoch:>3}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:7.2%}  "
                f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:7.2%}  {row['seconds']:5.1f}s",
                highlight=False,
            )

        hooks = Hooks(on_start=on_start, on_batch=lambda: bar.advance(state["task"]), on_epoch=on_epoch)
        with bar:
            summary = train_centralized(
                scen,
                run_dir,
                modalities=modalities,
                model_options={
                    "fusion": fusion.value,
                    "image_encoder": image_encoder,
                    "text_encoder": text_encoder,
                },
                train=cfg,
                on_bad_row=on_bad_row.value,
                cache_dir=cache_dir,
                progress=hooks,
            )
    except (MMFedError, FloatingPointError) as exc:  # FloatingPointError: the loss diverged (fixed text)
        fail(exc)
    console.print(
        f"[bold green]test accuracy {summary['test_accuracy']:.2%}[/] on {summary['test_examples']} "
        f"examples after {summary['epochs']} epochs ({summary['seconds']:.0f}s)"
    )
    console.print(
        f"results: {run_dir}/  (config.json, metrics.jsonl, summary.json, model.safetensors)", markup=False
    )


@app.command()
def simulate(
    config: Annotated[
        Path | None, typer.Option(help="scenario file, e.g. simulations/fsdd-mnist.toml")
    ] = None,
    scenario: Annotated[
        str | None, typer.Option(help="digits-av, fsdd-mnist (needs --data-dir), synthetic")
    ] = None,
    data_dir: DataDirOpt = None,
    rounds: Annotated[int | None, typer.Option(help="server rounds [3]")] = None,
    sites: Annotated[int | None, typer.Option(help="number of simulated sites [6]")] = None,
    fusion: Annotated[Fusion | None, typer.Option()] = None,
    modalities: Annotated[str | None, typer.Option(help="comma list [all the scenario has]")] = None,
    partition: Annotated[str | None, typer.Option(help="natural, iid or dirichlet:ALPHA")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="epochs each site trains per round [1]")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    min_sites: Annotated[
        int | None, typer.Option(help="fewer usable updates in a round stops the run [2]")
    ] = None,
    max_update_norm: Annotated[
        float | None, typer.Option(help="reject updates with a larger L2 norm")
    ] = None,
    server_test_dir: Annotated[
        Path | None, typer.Option(help="site dir whose test split the server evaluates")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="new directory for results [runs/fed-...]")] = None,
    resume: Annotated[
        bool, typer.Option(help="continue the run in --run-dir from its last complete round")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda")] = None,
    cache_dir: CacheOpt = None,
    initial_model: Annotated[
        Path | None, typer.Option(help="start from these weights (.safetensors, e.g. from `mmfed train`)")
    ] = None,
    freeze_encoders: Annotated[
        bool | None, typer.Option(help="train only fusion + classifier (DP fine-tuning from --initial-model)")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw (default) or sgd (momentum 0.9)")] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(help="DP: ε each site may spend over the whole run (σ follows)")
    ] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP: σ, instead of --target-epsilon")] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="DP: per-sample clipping norm [1.0]")] = None,
    delta: Annotated[float | None, typer.Option(help="DP: δ for sites without a site.toml [1e-5]")] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="sites' privacy state (site.toml, keys, budget, ledger) in DIR/<site> [RUN_DIR/sites]"
        ),
    ] = None,
    grad_sample_mode: Annotated[
        str | None, typer.Option(help="DP: ew (fastest here), hooks, functorch")
    ] = None,
    secure_aggregation: Annotated[
        bool | None, typer.Option(help="SecAgg+: the server only ever sees the sum of the updates")
    ] = None,
    secagg_max_examples: Annotated[
        int | None, typer.Option(help="SecAgg+: largest training set a site may weight by [10000]")
    ] = None,
    secagg_clipping_range: Annotated[
        float | None, typer.Option(help="SecAgg+: range of update x examples / max-examples [1.0]")
    ] = None,
    missing_modality_rate: Annotated[
        float | None, typer.Option(help="share of sites that lack one modality entirely [0]")
    ] = None,
    text_encoder: Annotated[
        str | None, typer.Option(help="bert-small (from scratch) or minilm (pretrained all-MiniLM-L6-v2)")
    ] = None,
    freeze_text: Annotated[
        bool | None, typer.Option(help="minilm: freeze all of it (default: its last layer trains)")
    ] = None,
    deidentify: Annotated[
        bool | None, typer.Option(help="scrub identifiers from text before tokenising [on]")
    ] = None,
    mask_diagnosis: Annotated[
        bool | None, typer.Option(help="label-leak guard: mask diagnosis terms in text [off]")
    ] = None,
    cpus_per_site: Annotated[float, typer.Option(help="CPUs Ray reserves per simulated site")] = 1.0,
    gpus_per_site: Annotated[
        float, typer.Option(help="GPU fraction per site, e.g. 0.25 = 4 sites per GPU")
    ] = 0.0,
    ray_address: Annotated[
        str | None, typer.Option(help="attach to a running Ray cluster (e.g. auto)")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's own logs")] = False,
) -> None:
    """Run a simulated federation: Flower's simulation engine, the ServerApp and ClientApp of deployment."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mmfed.federation.config import FederationConfig
    from mmfed.server.simulation import simulate as run_simulation

    options = {
        "scenario": scenario,
        "data_dir": data_dir,
        "rounds": rounds,
        "sites": sites,
        "fusion": fusion.value if fusion else None,
        "modalities": modalities,
        "partition": partition,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "min_sites": min_sites,
        "max_update_norm": max_update_norm,
        "server_test_dir": server_test_dir,
        "device": device,
        "cache_dir": cache_dir,
        "resume": resume or None,
        "initial_model": str(initial_model.resolve()) if initial_model else None,
        "optimizer": optimizer,
        "freeze_encoders": freeze_encoders,
        "target_epsilon": target_epsilon,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "delta": delta,
        "state_dir": state_dir,
        "grad_sample_mode": grad_sample_mode,
        "secure_aggregation": secure_aggregation,
        "secagg_max_examples": secagg_max_examples,
        "secagg_clipping_range": secagg_clipping_range,
        "missing_modality_rate": missing_modality_rate,
        "text_encoder": text_encoder,
        "freeze_text": freeze_text,
        "deidentify": deidentify,
        "mask_diagnosis": mask_diagnosis,
    }
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None}
    try:
        cfg = (
            FederationConfig.from_toml(config, **options)
            if config
            else FederationConfig.from_mapping(options)
        )
        target = run_dir or (Path(cfg.run_dir) if cfg.run_dir else None)
        target = target or Path("runs") / f"fed-{cfg.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
        reads = [config, cfg.initial_model or None]
        refuse_protected("--run-dir", target, reads, folder=True, instead="choose another --run-dir")
        if cfg.state_dir:  # by design STATE_DIR/<site> are site homes: only not inside a site's keys/, state/
            refuse_protected(
                "--state-dir", cfg.state_dir, reads, folder=True, instead="choose another --state-dir"
            )
        refuse_cache_dir(cfg.cache_dir or None)
        # files the run needs are checked now, not after Ray has started and the sites have trained
        if cfg.initial_model and not Path(cfg.initial_model).is_file():
            raise MMFedError(f"initial-model {cfg.initial_model}: no such file")
        if cfg.server_test_dir:
            if not (Path(cfg.server_test_dir) / "manifest.csv").is_file():
                raise MMFedError(f"server-test-dir {cfg.server_test_dir}: no manifest.csv there")
            _check_site_files(Path(cfg.server_test_dir))
        from mmfed.data.scenarios import FIXED_SITE_SCENARIOS

        if cfg.partition == "natural" and cfg.scenario in FIXED_SITE_SCENARIOS:
            from mmfed.site.runtime import federation_scenario

            natural = len(federation_scenario(cfg).sites)  # also builds it once, before any worker starts
            if sites is None:  # the data decides how many sites there are
                cfg = cfg.replace(sites=natural, min_sites=min(cfg.min_sites, natural))
            elif sites != natural:
                raise MMFedError(
                    f"{cfg.scenario} has {natural} natural sites: use --sites {natural}, "
                    "or --partition iid|dirichlet:A"
                )
        # absolute paths: Ray's worker processes need not share this working directory
        cfg = cfg.replace(
            run_dir=str(target.resolve()),
            data_dir=str(Path(cfg.data_dir).resolve()) if cfg.data_dir else "",
            cache_dir=str(Path(cfg.cache_dir).resolve()) if cfg.cache_dir else "",
            state_dir=str(Path(cfg.state_dir or target / "sites").resolve()),
        )
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

    try:
        with bar:
            summary = run_simulation(
                cfg,
                cpus_per_site=cpus_per_site,
                gpus_per_site=gpus_per_site,
                ray_address=ray_address,
                on_round=on_round,
                verbose=verbose,
            )
    except MMFedError as exc:  # anything else is a bug: _guarded logs it, the screen gets one line
        fail(exc)
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


@data_app.command("check")
def data_check(
    site_dir: Path,
    on_bad_row: OnBadRow = OnBadRow.fail,
    report: Annotated[
        Path | None, typer.Option(help="where skip writes its report [SITE_DIR/../NAME-skipped.csv]")
    ] = None,
) -> None:
    """Validate a site directory's manifest.csv and every file it names; list every problem."""
    from mmfed.data.manifest import load_manifest

    if report is None:  # `data check .` or `data check ..`: named after the folder, next to it
        named = site_dir if site_dir.name not in ("", ".", "..") else site_dir.resolve()
        report = named.parent / f"{named.name}-skipped.csv"
    try:
        _check_site_files(site_dir)
        site_files = [site_dir / name for name in ("manifest.csv", "labels.txt", "site.toml")]
        refuse_protected("--report", report, [*site_files, *manifest_files(site_dir)])
        manifest = load_manifest(site_dir, on_bad_row=on_bad_row.value, report_path=report)
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
        manifest = _load_manifest(site_dir)
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
    """Build a scenario's site directories (once) and print where they are."""
    refuse_cache_dir(cache_dir)
    try:
        scen = _scenario(scenario, data_dir, cache_dir, None, seed)
    except MMFedError as exc:
        fail(exc)
    for site in scen.sites:
        console.print(str(site), markup=False)


@site_app.command("init")
def site_init(
    dir: Annotated[Path, typer.Option("--dir", help="the site directory (manifest.csv, labels.txt)")],
    max_epsilon: Annotated[float, typer.Option(help="ε cap written into site.toml")] = 8.0,
    delta: Annotated[float, typer.Option(help="δ written into site.toml")] = 1e-5,
    public_examples: Annotated[
        int,
        typer.Option(
            help="the training-set size the site discloses (site.toml public_examples); "
            "0: the manifest's count rounded to two significant digits"
        ),
    ] = 0,
) -> None:
    """Create the site's policy (site.toml) and ledger signing key; validate its manifest; say what next.
    Never overwrites: an existing policy or key is kept."""
    from mmfed.config import MODALITIES
    from mmfed.privacy import site_keys
    from mmfed.privacy.geometry import rounded_size
    from mmfed.privacy.policy import POLICY_FILE, SitePolicy, load_policy

    if not (dir / "manifest.csv").exists():
        fail(
            MMFedError(
                f"{dir}: no manifest.csv; a site directory holds manifest.csv (see README, 'Site data')"
            )
        )
    policy_path = dir / POLICY_FILE
    # its own policy and key it creates (never replaces); not through links into another site, nor in one
    refuse_protected(
        "--dir",
        dir,
        [dir / "manifest.csv", dir / "labels.txt"],
        folder=True,
        writes=(POLICY_FILE, site_keys.PRIVATE_KEY, site_keys.PUBLIC_KEY),
        own=dir,
        instead="nothing was written",
    )
    try:
        manifest = _load_manifest(dir)  # first: a bad manifest leaves nothing half written
        train = len(manifest.split("train"))
        if policy_path.exists():
            console.print(f"kept existing {policy_path}", markup=False)
            policy = load_policy(policy_path)
        else:
            public = public_examples or rounded_size(train)
            # the site's schema: the modalities any record has (declared once, not recounted each round)
            held = tuple(m for m in MODALITIES if any(getattr(s, m) is not None for s in manifest.samples))
            policy = SitePolicy(
                max_epsilon=max_epsilon,
                delta=delta,
                public_examples=public,
                held_modalities=held,
                source=str(policy_path),
            )
            policy.validate()
            policy_path.write_text(policy.template())
            console.print(
                f"wrote {policy_path} (max_epsilon {max_epsilon:g}, δ {delta:g}, public_examples {public}): "
                "review it",
                markup=False,
            )
        if (dir / site_keys.PRIVATE_KEY).exists():
            key = site_keys.load_private_key(dir)
            console.print(f"kept existing key {dir / site_keys.PRIVATE_KEY}", markup=False)
        else:
            key = site_keys.create_key(dir)
            console.print(
                f"created ledger signing key {dir / site_keys.PRIVATE_KEY} (mode 0600)", markup=False
            )
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"manifest OK: {len(manifest.samples)} records, {train} for training, labels {manifest.labels}",
        markup=False,
    )
    size = policy.public_examples or train
    if size and policy.delta >= 1 / size:
        console.print(
            f"[yellow]δ={policy.delta:g} is not below 1/{size} (the public size): the site will refuse DP "
            f"rounds; set a smaller delta in {escape(str(policy_path))} "
            f"(e.g. {10 ** -len(str(size * 10)):g})[/]"
        )
    if not policy.public_examples:
        console.print(
            f"[yellow]{escape(str(policy_path))} declares no public_examples: the site will refuse DP rounds "
            "until it does[/]"
        )
    console.print(
        "\nnext:\n"
        f"  1. review {policy_path} (the ε cap, δ and the limits on what a run may propose)\n"
        f"  2. give your privacy officer the public key {dir / site_keys.PUBLIC_KEY}\n"
        f"     (fingerprint {site_keys.key_id(key.public_key())});"
        f" keep {dir / site_keys.PRIVATE_KEY} private\n"
        f"  3. mmfed site check --dir {dir}   (policy, key, manifest, budget spent so far)\n"
        "  4. get from the server operator: the SuperLink address, its CA certificate (ca.crt), and an\n"
        "     authentication key pair (`mmfed certs node --out keys --name SITE`; send them keys/SITE.pub)\n"
        "  5. connect (TLS and node authentication; plain text only with an explicit --insecure):\n"
        f"     flower-supernode --superlink SUPERLINK_HOST:PORT --root-certificates ca.crt \\\n"
        f"       --auth-supernode-private-key keys/SITE \\\n"
        f"       --node-config \"site-dir='{dir.resolve()}'\" --host 127.0.0.1 --port 9094",
        highlight=False,
        markup=False,
        soft_wrap=True,  # commands to copy: never break a path
    )


@site_app.command("check")
def site_check(dir: Annotated[Path, typer.Option("--dir", help="the site directory")]) -> None:
    """Validate the site's policy, key and manifest, and show the privacy budget spent so far."""
    from mmfed.privacy import site_keys
    from mmfed.privacy.budget import SiteBudget
    from mmfed.privacy.fingerprint import data_fingerprint

    try:
        manifest = _load_manifest(dir)
        fingerprint = data_fingerprint(manifest.split("train"))
        budget = SiteBudget(dir, fingerprint, site=dir.name)
        prv, rdp = budget.spent()
    except MMFedError as exc:
        fail(exc)
    policy = budget.policy
    console.print(
        f"policy {policy.source}: max ε {policy.max_epsilon:g}, δ {policy.delta:g}, "
        f"σ ≥ {policy.min_noise_multiplier:g}, C ≤ {policy.max_clipping_norm:g}, "
        f"q ≤ {policy.max_sample_rate:g}, modalities {list(policy.allowed_modalities)}, "
        f"public size {policy.public_examples or 'not declared'}, "
        f"holds {list(policy.held_modalities) or 'not declared'}",
        highlight=False,
        markup=False,
    )
    console.print(f"key {site_keys.key_id(budget.key.public_key())}", highlight=False)
    console.print(
        f"ε spent {prv:.3f} (PRV), {rdp:.3f} (RDP), over every release (data now {fingerprint[:19]}); "
        f"remaining {policy.max_epsilon - prv:.3f}",
        highlight=False,
    )


@site_app.command("rotate-key")
def site_rotate_key(
    dir: Annotated[Path, typer.Option("--dir", help="the site's home (site directory or state-dir)")],
    lost: Annotated[
        bool,
        typer.Option("--lost", help="the old private key is gone: record its loss (every audit reports it)"),
    ] = False,
) -> None:
    """Replace the ledger signing key: a ledger entry announces the new public key, signed by the old
    key (or, with --lost, by the new one and marked as a loss). The old public key moves to keys/retired/."""
    from mmfed.privacy.key_rotation import RETIRED, rotate_key

    try:
        old, new = rotate_key(dir, lost=lost)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"rotated {old} -> {new}{' (recorded as a LOST key)' if lost else ''}; the old public key is in "
        f"{dir / RETIRED}. Give your privacy officer the new public key "
        f"{dir / 'keys/ledger-signing.pub.pem'} (fingerprint above) and keep both.",
        markup=False,
        highlight=False,
    )


@site_app.command("approve")
def site_approve(
    dir: Annotated[Path, typer.Option("--dir", help="the site directory (its site.toml)")],
    config: Annotated[Path, typer.Option("--config", help="the run's configuration (TOML) to review")],
    write: Annotated[
        bool, typer.Option("--write", help="add the model's hash to approved_models in site.toml")
    ] = False,
) -> None:
    """Show what a run would train at this site — task, labels, modalities, model, parameters — and its
    approval hash; with --write, approve it (site.toml's approved_models)."""
    from mmfed.federation.config import FederationConfig
    from mmfed.models import build_model, count_parameters
    from mmfed.privacy.policy import POLICY_FILE, load_policy
    from mmfed.site.runtime import federation_scenario, model_approval

    try:
        cfg = FederationConfig.from_toml(config)
        scenario = federation_scenario(cfg, build=False)
        model_cfg = cfg.model_config(scenario)
        approval = model_approval(model_cfg, scenario.labels)
        policy_path = dir / POLICY_FILE
        policy = load_policy(policy_path)
    except MMFedError as exc:
        fail(exc)
    trained = count_parameters(build_model(model_cfg))
    console.print(
        f"task {cfg.scenario}: labels {list(scenario.labels)}\n"
        f"modalities {list(model_cfg.modalities)}, {model_cfg.fusion} fusion, image encoder "
        f"{model_cfg.image_encoder}, text encoder {model_cfg.text_encoder}, hidden {model_cfg.hidden_dim}, "
        f"{trained:,} parameters\n"
        f"privacy proposed: target ε {cfg.target_epsilon:g}, σ {cfg.noise_multiplier:g}, "
        f"C {cfg.max_grad_norm:g}, "
        f"batch {cfg.batch_size}, {cfg.rounds} rounds x {cfg.local_epochs} local epoch(s)\n"
        f"approval hash {approval}",
        highlight=False,
        markup=False,
    )
    if approval in policy.approved_models:
        console.print(f"already approved in {policy_path}", markup=False)
    elif write:
        import re
        import tomllib

        from mmfed.files import write_atomic

        text = policy_path.read_text()
        listed = ", ".join(f'"{h}"' for h in (*policy.approved_models, approval))
        line = f"approved_models = [{listed}]"
        pattern = re.compile(r"^approved_models\s*=.*$", re.M)
        updated = (
            pattern.sub(line, text, count=1)
            if pattern.search(text)
            else re.sub(r"^\[privacy\]\s*$", f"[privacy]\n{line}", text, count=1, flags=re.M)
        )
        try:
            tomllib.loads(updated)  # never write a policy that does not read back
        except tomllib.TOMLDecodeError as exc:
            fail(MMFedError(f"{policy_path}: could not add the hash ({exc}); add it by hand"))
        write_atomic(policy_path, updated)
        load_policy(policy_path)
        console.print(f"approved: {policy_path} approved_models now lists {approval}", markup=False)
    else:
        console.print(f"not approved yet: rerun with --write to add it to {policy_path}", markup=False)


@certs_app.command("server")
def certs_server(
    out: Annotated[Path, typer.Option("--out", help="folder for ca.key/ca.crt and server.key/server.pem")],
    host: Annotated[list[str], typer.Option("--host", help="DNS name or IP the SuperLink is reached by")],
    days: Annotated[int, typer.Option(help="server certificate validity")] = 365,
    force: Annotated[bool, typer.Option(help="replace an existing server key")] = False,
) -> None:
    """A CA (created once, then reused) and the SuperLink's TLS certificate for the given hosts."""
    from mmfed.pki import certs

    writes = (certs.CA_KEY, certs.CA_CERT, certs.SERVER_KEY, certs.SERVER_CERT)
    refuse_protected("--out", out, folder=True, writes=writes, instead="choose another --out folder")
    try:
        cert = certs.server_certificate(out, host, days=days, force=force)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"CA: {out / certs.CA_CERT} (give this to every site; keep {out / certs.CA_KEY} offline)\n"
        f"SuperLink: --ssl-ca-certfile {out / certs.CA_CERT} --ssl-certfile {cert} "
        f"--ssl-keyfile {out / certs.SERVER_KEY}",
        highlight=False,
        markup=False,
    )


@certs_app.command("node")
def certs_node(
    out: Annotated[Path, typer.Option("--out", help="folder for the key pair")],
    name: Annotated[str, typer.Option("--name", help="file name, e.g. the site's name")],
    force: Annotated[bool, typer.Option(help="replace an existing key")] = False,
) -> None:
    """An EC P-384 key pair (OpenSSH format) that authenticates a SuperNode to the SuperLink."""
    from mmfed.pki import certs

    refuse_protected(
        "--out", out, folder=True, writes=(name, f"{name}.pub"), instead="choose another --out folder"
    )
    try:
        private, public = certs.node_key(out, name, force=force)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"private key {private} (mode 0600, stays at the site); public key {public} (register it)",
        markup=False,
    )


@app.command()
def audit(
    paths: Annotated[list[Path], typer.Argument(help="ledger files, site directories, or folders of them")],
    format: Annotated[str, typer.Option("--format", help="text, md, html or json")] = "text",
    plots: Annotated[Path | None, typer.Option(help="write epsilon_per_round.png here")] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="the site's public key, when auditing one ledger file alone")
    ] = None,
    thorough: Annotated[
        bool, typer.Option(help="also recompute the final ε with Opacus (RDP, PRV) and PLD (slower)")
    ] = False,
    output: Annotated[Path | None, typer.Option(help="write the report here instead of stdout")] = None,
    anchors: Annotated[
        list[Path] | None,
        typer.Option(
            help="run directory whose anchors.jsonl (the server's record of each site's ledger "
            "head) the ledgers must still hold (repeatable)"
        ),  # fmt: skip
    ] = None,
) -> None:
    """Verify privacy ledgers (chain, signatures, key), recompute ε independently, report; exit 1 on any
    failed check or any site over its cap."""
    from mmfed.audit import report
    from mmfed.audit.check import audit_ledger, check_anchors, find_ledgers
    from mmfed.privacy import site_keys

    if format not in ("text", "md", "html", "json"):
        fail(MMFedError(f"--format {format!r}: use text, md, html or json"))
    try:
        found = find_ledgers(paths)
        if public_key and len(found) > 1:
            raise MMFedError("--public-key applies to one ledger; audit site directories to use their keys")
        reads = [
            *paths,
            public_key,
            *(p for p, _ in found),
            *(h / site_keys.PUBLIC_KEY for _, h in found if h),
        ]
        reads += [Path(d) / "anchors.jsonl" for d in anchors or []]
        refuse_protected("--output", output, reads)
        plot = ("epsilon_per_round.png",)
        refuse_protected(
            "--plots", plots, reads, folder=True, writes=plot, instead="write the plots elsewhere"
        )
        audits = [audit_ledger(path, home, public_key, thorough) for path, home in found]
        if anchors:
            checked = check_anchors(audits, anchors)
            Console(stderr=True).print(f"anchors: {checked} ledger heads checked", highlight=False)
    except MMFedError as exc:
        fail(exc)
    if format == "text" and output is None:
        report.print_text(audits, console)
    else:
        text = {
            "text": report.as_markdown,
            "md": report.as_markdown,
            "html": report.as_html,
            "json": report.as_json,
        }[format](audits)
        if output:
            output.write_text(text)
        else:
            print(text)
    if plots:
        path = report.plot_epsilon(audits, plots)
        # the report may be on stdout (md/json piped to a file): status goes to stderr
        Console(stderr=True).print(f"plot: {path}", highlight=False)
    if not all(a.ok for a in audits):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
