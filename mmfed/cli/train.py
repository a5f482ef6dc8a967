"""`mmfed train`: the centralised baseline a federation is compared with."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mmfed.cli.common import CacheOpt, DataDirOpt, OnBadRow, ScenarioOpt, console, prepared_scenario
from mmfed.config import FUSIONS, IMAGE_ENCODERS, TEXT_ENCODERS
from mmfed.errors import MMFedError
from mmfed.protected import refuse_cache_dir, refuse_protected
from mmfed.screens import fail

Fusion = StrEnum("Fusion", {name: name for name in FUSIONS})
ImageEncoder = StrEnum("ImageEncoder", {name: name for name in IMAGE_ENCODERS})
TextEncoder = StrEnum("TextEncoder", {name: name for name in TEXT_ENCODERS})


SiteDirOpt = Annotated[list[Path] | None, typer.Option(help="train on your own site directory (repeatable)")]
ModalitiesOpt = Annotated[str | None, typer.Option(help="comma list, e.g. image,audio [all the data has]")]
TextEncoderOpt = Annotated[TextEncoder, typer.Option(help="bert-small or minilm (pretrained, offline)")]
ModalityDropoutOpt = Annotated[float, typer.Option(help="chance of hiding one modality of a training sample")]
OnBadRowOpt = Annotated[OnBadRow, typer.Option(help="fail, or skip bad manifest rows (report in run dir)")]
TargetEpsilonOpt = Annotated[
    float, typer.Option(help="central DP-SGD spending this ε over the whole training (0: no DP)")
]
InitialModelOpt = Annotated[
    str | None,
    typer.Option(
        help="model.safetensors to start from (e.g. trained on public data), or pretrained:NAME "
        "(pretrained:digits-public, pretrained:fsdd-mnist-public: trained once on public data, cached)"
    ),
]
FreezeOpt = Annotated[
    bool, typer.Option(help="train only the fusion and the classifier (with --initial-model)")
]


def train(
    scenario: ScenarioOpt = "digits-av",
    data_dir: DataDirOpt = None,
    site_dir: SiteDirOpt = None,
    modalities: ModalitiesOpt = None,
    fusion: Fusion = Fusion.attention,
    image_encoder: Annotated[ImageEncoder, typer.Option(help="cnn or resnet18")] = ImageEncoder.cnn,
    text_encoder: TextEncoderOpt = TextEncoder["bert-small"],
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    augment: Annotated[bool, typer.Option(help="audio/image augmentation while training")] = True,
    modality_dropout: ModalityDropoutOpt = 0.3,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N")] = "auto",
    on_bad_row: OnBadRowOpt = OnBadRow.fail,
    run_dir: Annotated[Path | None, typer.Option(help="new directory for results [runs/train-...]")] = None,
    cache_dir: CacheOpt = None,
    target_epsilon: TargetEpsilonOpt = 0.0,
    delta: Annotated[float, typer.Option(help="δ of the central DP guarantee")] = 1e-5,
    max_grad_norm: Annotated[float, typer.Option(help="per-record clipping norm (central DP)")] = 1.0,
    initial_model: InitialModelOpt = None,
    freeze_encoders: FreezeOpt = False,
) -> None:
    """Centralised baseline: pool all sites' data, train, evaluate on the test split; with
    --target-epsilon, central DP-SGD (the reference for a federation under DP)."""
    from mmfed.config import TrainConfig
    from mmfed.data.site_files import check_site_files
    from mmfed.runs import new_run_dir
    from mmfed.train.centralized import check_run_dir, train_centralized

    run_dir = run_dir or new_run_dir("train", scenario if not site_dir else "sites")
    refuse_protected("--run-dir", run_dir, folder=True, instead="choose another --run-dir")
    refuse_cache_dir(cache_dir)
    try:
        cfg = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, augment=augment,
            modality_dropout=modality_dropout, device=device,
        )  # fmt: skip
        cfg.validate()  # the options and the run dir first: before any data is read or built
        privacy = _privacy(target_epsilon, delta, max_grad_norm, initial_model)
        check_run_dir(run_dir)
        for site in site_dir or []:
            check_site_files(site)
        scen = prepared_scenario(scenario, data_dir, cache_dir, site_dir, seed)
        options = {
            "fusion": fusion.value,
            "image_encoder": image_encoder.value,
            "text_encoder": text_encoder.value,
        }
        start = _start(initial_model, scen, modalities, options, data_dir, cache_dir, seed, device)
        bar, hooks = _progress()
        with bar:
            summary = train_centralized(
                scen,
                run_dir,
                modalities=modalities,
                model_options=options,
                train=cfg,
                on_bad_row=on_bad_row.value,
                cache_dir=cache_dir,
                progress=hooks,
                privacy=privacy,
                initial_model=start,
                freeze_encoders=freeze_encoders,
            )
    except (MMFedError, FloatingPointError) as exc:  # FloatingPointError: the loss diverged (fixed text)
        fail(exc)
    console.print(
        f"[bold green]test accuracy {summary['test_accuracy']:.2%}[/] on {summary['test_examples']} "
        f"examples after {summary['epochs']} epochs ({summary['seconds']:.0f}s)"
    )
    if summary.get("private"):
        _print_privacy(summary)
    console.print(
        f"results: {run_dir}/  (config.json, metrics.jsonl, summary.json, model.safetensors)", markup=False
    )


def _privacy(target_epsilon: float, delta: float, max_grad_norm: float, initial_model: str | None):
    """The central DP settings (None without --target-epsilon) and the start model's name, checked."""
    from mmfed.train.central_dp import CentralPrivacy
    from mmfed.train.pretrained import check_name, is_pretrained

    privacy = CentralPrivacy(target_epsilon, delta, max_grad_norm) if target_epsilon else None
    if privacy is not None:
        privacy.validate()
    if initial_model and not is_pretrained(initial_model) and not Path(initial_model).is_file():
        raise MMFedError(f"--initial-model {initial_model}: not a file; give a model.safetensors")
    check_name(initial_model or "")
    return privacy


def _print_privacy(summary: dict) -> None:
    console.print(
        f"central DP-SGD: ε = {summary['epsilon_prv']:.3f} (PRV; RDP {summary['epsilon_rdp']:.3f}) at "
        f"δ = {summary['delta']:g} for the whole training, σ {summary['noise_multiplier']:.3f}, "
        f"clipping norm {summary['max_grad_norm']:g}",
        highlight=False,
    )


def _start(initial_model, scen, modalities, options, data_dir, cache_dir, seed, device) -> Path | None:
    """The model file to start from: `pretrained:NAME` is trained (once, on its public data) for this
    run's model and cached, like a simulation's initial-model."""
    from mmfed.train.pretrained import is_pretrained

    if not initial_model:
        return None
    if not is_pretrained(initial_model):
        return Path(initial_model)
    from mmfed.data.cache import default_cache_dir
    from mmfed.train.centralized import centralised_task
    from mmfed.train.pretrained import pretrained_model

    task = centralised_task(scen, scen.run_modalities(modalities), options)
    found = pretrained_model(
        initial_model, task, Path(cache_dir) if cache_dir else default_cache_dir(), device=device,
        on_train=lambda m: console.print(m, markup=False), data_dir=data_dir, seed=seed,
    )  # fmt: skip
    return found.path


def _progress():
    """A progress bar over every batch of every epoch, and one printed line per epoch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mmfed.train.centralized import Progress as Hooks

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
        state["epochs"], state["batches"] = n_epochs, batches

    def on_epoch(epoch: int, row: dict) -> None:
        if "epsilon_prv" in row:  # central DP: no per-batch progress, no train metrics
            bar.update(state["task"], completed=epoch * state["batches"], epoch=f"{epoch}/{state['epochs']}")
            console.print(
                f"epoch {epoch:>3}  ε so far {row['epsilon_prv']:.3f}  test loss {row['test_loss']:.4f} "
                f"acc {row['test_accuracy']:7.2%}  {row['seconds']:5.1f}s",
                highlight=False,
            )
            return
        info = f"loss {row['train_loss']:.3f}  test acc {row['test_accuracy']:.2%}"
        bar.update(state["task"], epoch=f"{min(epoch + 1, state['epochs'])}/{state['epochs']}", info=info)
        console.print(
            f"epoch {epoch:>3}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:7.2%}  "
            f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:7.2%}  {row['seconds']:5.1f}s",
            highlight=False,
        )

    hooks = Hooks(on_start=on_start, on_batch=lambda: bar.advance(state["task"]), on_epoch=on_epoch)
    return bar, hooks
