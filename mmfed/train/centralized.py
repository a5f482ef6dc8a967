"""Centralised baseline: pool every site's data, train one model, evaluate on the test split.

Writes a run directory: config.json, metrics.jsonl (one line per epoch), model.safetensors (+ .json).
This is the reference a federation is compared with.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch.utils.data import DataLoader

from mmfed.checkpoint import save_checkpoint
from mmfed.config import DataSpec, ModelConfig, TrainConfig, config_hash, to_jsonable
from mmfed.data.cache import default_cache_dir
from mmfed.data.dataset import Collate, MultimodalDataset, Processors
from mmfed.data.manifest import SiteManifest
from mmfed.data.scenarios import Scenario
from mmfed.errors import ConfigError, MMFedError
from mmfed.models import build_model, count_parameters
from mmfed.runs import claim_run_dir
from mmfed.task import ModelSettings, Task
from mmfed.train.central_dp import CentralPrivacy, train_epochs_private
from mmfed.train.loop import (
    Metrics,
    evaluate,
    make_loader,
    make_optimizer,
    seed_everything,
    select_device,
    train_epoch,
)


@dataclass(frozen=True)
class Start:
    """Where the model starts: a checkpoint's weights, and whether its encoders are frozen."""

    initial_model: Path | None = None
    freeze_encoders: bool = False

    def apply(self, model: torch.nn.Module) -> None:
        if self.initial_model is not None:
            from mmfed.checkpoint import load_checkpoint

            load_checkpoint(model, Path(self.initial_model))
        if self.freeze_encoders:
            for name, param in model.named_parameters():
                if name.startswith("encoders."):
                    param.requires_grad = False


@dataclass
class Progress:
    """Hooks a front end (the CLI's progress bar) can fill in; all optional."""

    on_start: Callable[[int, int], None] | None = None  # (epochs, batches per epoch)
    on_batch: Callable[[], None] | None = None
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None


def check_run_dir(run_dir: Path) -> None:
    """Refused now (before any data is read) unless `run_dir` can become this run's directory: a new or
    empty folder, not a file, not under one; an earlier run's results are never overwritten."""
    run_dir = Path(run_dir)
    for part in (run_dir, *run_dir.parents):
        if part.exists() and not part.is_dir():
            what = "is a file" if part == run_dir else f"is under {part}, a file"
            raise MMFedError(f"--run-dir {run_dir}: {what}; choose a new --run-dir (nothing was changed)")
        if part.exists():
            break
    claim_run_dir(run_dir)


def prepare_run_dir(run_dir: Path) -> tuple[Path, Path | None]:
    """A new or empty directory: an earlier run's results are never overwritten. Returns it and the
    topmost folder this call created (None: it was there, empty), what a failed run removes again."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    created = next(
        (p for p in reversed((run_dir, *run_dir.parents)) if not p.exists()), None
    )  # the first missing folder from the top: mkdir creates it and everything below
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, created


def _undo_run_dir(run_dir: Path, created: Path | None) -> None:
    """After a failed run: remove what it wrote, so that the same --run-dir can be used again. A folder
    the run created goes; one that was there (empty) stays, emptied of what the run wrote in it."""
    import shutil

    try:
        if created is not None:
            shutil.rmtree(created)
        else:
            for child in run_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    except OSError:  # what cannot be removed stays; the run's own error is the one to report
        pass


def versions() -> dict[str, str]:
    import flwr
    import opacus
    import torchvision
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "opacus": opacus.__version__,
        "flwr": flwr.__version__,
        "transformers": transformers.__version__,
    }


def train_centralized(
    scenario: Scenario,
    run_dir: Path,
    modalities: tuple[str, ...] | str | None = None,
    model_options: dict[str, Any] | None = None,
    train: TrainConfig | None = None,
    on_bad_row: str = "fail",
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    privacy: CentralPrivacy | None = None,
    initial_model: Path | None = None,
    freeze_encoders: bool = False,
) -> dict[str, Any]:
    """Train on every site's train split pooled; returns the summary (also written to summary.json).
    With `privacy`, central DP-SGD (mmfed.train.central_dp); `initial_model` is a checkpoint to start
    from, `freeze_encoders` trains only the fusion and the classifier (the federated DP recipe's)."""
    train = train or TrainConfig()
    train.validate()
    if privacy is not None:
        privacy.validate()
    progress = progress or Progress()
    task = centralised_task(scenario, scenario.run_modalities(modalities), model_options or {})
    task.model_config().validate()
    run_dir, created = prepare_run_dir(run_dir)
    try:
        start = Start(initial_model, freeze_encoders)
        return _train(scenario, run_dir, task, train, on_bad_row, cache_dir, progress, privacy, start)
    except BaseException:  # an error, the loss diverging, Ctrl-C: nothing half-written blocks a retry
        _undo_run_dir(run_dir, created)
        raise


def centralised_task(scenario: Scenario, mods: tuple[str, ...], model_options: dict[str, Any]) -> Task:
    """The task the baseline trains (the scenario's, for these modalities and model settings): what its
    model.safetensors carries, so that `mmfed evaluate` / `predict` / `export` can use the model alone."""
    known = {f.name for f in dataclasses.fields(ModelSettings)}
    unknown = sorted(set(model_options) - known)
    if unknown:
        raise ConfigError(
            "model", f"unknown model setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return scenario.task(ModelSettings(**model_options), mods)


def _train(
    scenario: Scenario,
    run_dir: Path,
    task: Task,
    train: TrainConfig,
    on_bad_row: str,
    cache_dir: Path | None,
    progress: Progress,
    privacy: CentralPrivacy | None = None,
    start: Start | None = None,
) -> dict[str, Any]:
    mods, model_cfg = task.modalities, task.model_config()
    device = select_device(train.device)
    seed_everything(train.seed)

    sites = scenario.load_sites(on_bad_row=on_bad_row, report_dir=run_dir)
    datasets = pooled_datasets(scenario, sites, mods, train, cache_dir)
    collate = Collate(scenario.spec, mods)
    train_loader = make_loader(datasets["train"], collate, train.batch_size, True, train.seed)
    test_loader = make_loader(datasets["test"], collate, 256, False, train.seed)
    val_loader = (
        make_loader(datasets["val"], collate, 256, False, train.seed) if len(datasets["val"]) else None
    )

    model = build_model(model_cfg)
    if start is not None:
        start.apply(model)
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer("adamw", params, train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    config = run_config(scenario, model_cfg, train, on_bad_row, device, sites, datasets, model)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    if progress.on_start:
        progress.on_start(train.epochs, len(train_loader))
    started = time.perf_counter()
    mechanism: dict[str, Any] = {"private": False}
    with (run_dir / "metrics.jsonl").open("w") as log:
        if privacy is None:
            loaders = (train_loader, test_loader, val_loader)
            test = train_epochs(model, loaders, optimizer, scheduler, device, train.epochs, log, progress)
        else:
            test, mechanism = train_epochs_private(
                model, datasets["train"], collate, (test_loader, val_loader), privacy, train, device, log,
                progress,
            )  # fmt: skip

    summary = {
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "test_examples": test.examples,
        "epochs": train.epochs,
        "seconds": round(time.perf_counter() - started, 2),
        "run_dir": str(run_dir),
        **mechanism,
    }
    write_results(run_dir, summary, model, task, scenario.spec)
    return summary


def write_results(
    run_dir: Path, summary: dict[str, Any], model: torch.nn.Module, task: Task, spec: DataSpec
) -> None:
    """summary.json, and the trained model (moved to the CPU) with its task, the text preprocessing it was
    trained with, its config and the summary."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    model_cfg = task.model_config()
    save_checkpoint(
        model.cpu(),
        run_dir / "model.safetensors",
        {
            "kind": "centralized",
            "task": task.to_dict(),
            "task_hash": task.approval(),
            "preprocessing": {"deidentify": spec.text.deidentify, "mask_diagnosis": spec.text.mask_diagnosis},
            "private": bool(summary.get("private")),
            "config_hash": config_hash(model_cfg),
            "model": to_jsonable(model_cfg),
            "labels": list(task.labels),
            **{k: v for k, v in summary.items() if k != "private"},
        },
    )


def pooled_datasets(
    scenario: Scenario,
    sites: list[SiteManifest],
    mods: tuple[str, ...],
    train: TrainConfig,
    cache_dir: Path | None,
) -> dict[str, MultimodalDataset]:
    """Every site's train, val and test splits pooled; refused when train or test holds no sample."""
    processors = Processors(scenario.spec, mods, cache_dir=(cache_dir or default_cache_dir()) / "features")
    pooled = {split: [s for site in sites for s in site.split(split)] for split in ("train", "val", "test")}
    train_ds = MultimodalDataset(
        pooled["train"], processors, augment=train.augment, modality_dropout=train.modality_dropout
    )
    test_ds = MultimodalDataset(pooled["test"], processors)
    val_ds = MultimodalDataset(pooled["val"], processors)
    if not len(train_ds) or not len(test_ds):
        raise MMFedError(
            f"scenario {scenario.name}: {len(train_ds)} train and {len(test_ds)} test samples carry any of "
            f"{', '.join(mods)}; both splits need samples"
        )
    return {"train": train_ds, "val": val_ds, "test": test_ds}


def run_config(
    scenario: Scenario,
    model_cfg: ModelConfig,
    train: TrainConfig,
    on_bad_row: str,
    device: torch.device,
    sites: list[SiteManifest],
    datasets: dict[str, MultimodalDataset],
    model: torch.nn.Module,
) -> dict[str, Any]:
    """What config.json records of the run."""
    return {
        "kind": "centralized",
        "scenario": scenario.name,
        "sites": [str(s) for s in scenario.sites],
        "labels": scenario.labels,
        "data": to_jsonable(scenario.spec),
        "model": to_jsonable(model_cfg),
        "train": to_jsonable(train),
        "on_bad_row": on_bad_row,
        "device": str(device),
        "examples": {split: len(datasets[split]) for split in ("train", "val", "test")},
        "skipped_rows": sum(len(s.skipped) for s in sites),
        "parameters": count_parameters(model),
        "versions": versions(),
    }


def train_epochs(
    model: torch.nn.Module,
    loaders: tuple[DataLoader, DataLoader, DataLoader | None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epochs: int,
    log: TextIO,
    progress: Progress,
) -> Metrics:
    """Train `epochs` epochs, evaluating after each one (a line of `log`); the last test metrics."""
    train_loader, test_loader, val_loader = loaders
    test = Metrics()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        fit = train_epoch(model, train_loader, optimizer, device, on_batch=progress.on_batch)
        scheduler.step()
        test = evaluate(model, test_loader, device)
        row: dict[str, Any] = {"epoch": epoch, **fit.as_dict("train_"), **test.as_dict("test_")}
        if val_loader is not None:
            row.update(evaluate(model, val_loader, device).as_dict("val_"))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        log.write(json.dumps(row) + "\n")
        log.flush()
        if progress.on_epoch:
            progress.on_epoch(epoch, row)
    return test
