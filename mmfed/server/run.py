"""The server side of a run: global model, run directory (new or resumed), strategy, legacy workflow.

Both the ServerApp (`server/app.py`, config from Flower's run config) and `mmfed simulate` (config from
the command line) call `run_server`, so simulation and deployment cannot drift apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow

from mmfed.checkpoint import load_checkpoint
from mmfed.config import config_hash, to_jsonable
from mmfed.data.dataset import Collate, MultimodalDataset, Processors
from mmfed.data.manifest import load_manifest
from mmfed.errors import MMFedError
from mmfed.federation import secagg
from mmfed.federation.config import FederationConfig
from mmfed.federation.encoder_groups import parameter_groups
from mmfed.federation.params import get_weights, set_weights
from mmfed.federation.run_task import run_task
from mmfed.files import WriteError
from mmfed.models import build_model
from mmfed.runs import new_run_dir
from mmfed.server.lost_sites import SiteNamingGrid
from mmfed.server.plots import write_plots
from mmfed.server.prepare import natural_sites, resolve_initial_model
from mmfed.server.resume import Resume
from mmfed.server.rundir import RunDir, held
from mmfed.server.strategy import RunRecorder, build_strategy
from mmfed.task import Task
from mmfed.train.loop import evaluate, make_loader, seed_everything, select_device


def wait_for_sites(grid: Grid, minimum: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        count = len(list(grid.get_node_ids()))
        if count >= minimum:
            return count
        if not threading.main_thread().is_alive():  # the process is exiting (Ctrl-C): stop waiting
            raise MMFedError("the simulation was interrupted while waiting for sites")
        if time.monotonic() > deadline:
            raise MMFedError(
                f"only {count} site(s) connected after {timeout_s:.0f}s, fewer than min-sites={minimum}; "
                "start more sites or lower min-sites"
            )
        time.sleep(0.5)


def _check_same_task(run_dir: RunDir, task: Task) -> None:
    """A resumed run must train the task it started with (a task file is read anew on every start)."""
    before = (run_dir.saved or {}).get("task_hash")
    if before is not None and before != task.approval():
        raise MMFedError(
            f"{run_dir.path}: cannot resume: the task changed since the run started ({before} -> "
            f"{task.approval()}); restore the task file or start a new --run-dir"
        )


def _check_rounds(run_dir: RunDir, cfg: FederationConfig, done: int) -> None:
    """A resumed run has rounds left to train, or a summary left to write (a crash after the last round)."""
    more = f"to train more, resume with more rounds (--rounds N, N > {done}), or start a new --run-dir"
    if done > cfg.rounds:
        raise MMFedError(f"{run_dir.path}: it has done {done} rounds, more than rounds={cfg.rounds}; {more}")
    if done == cfg.rounds and run_dir.summary().get("rounds_completed") == done:
        raise MMFedError(f"{run_dir.path}: the run already completed its {done} rounds; {more}")


def open_run(cfg: FederationConfig) -> tuple[Task, Any, RunDir, Resume]:
    """The task, its model (initial weights), the run directory and where the run continues from: all of
    it checked before anything is written, so that `mmfed simulate` can refuse before Ray starts."""
    task = run_task(cfg)  # the task only: a deployed server has none of the sites' data (and needs none)
    seed_everything(cfg.seed)
    model = build_model(task.model_config())
    if cfg.initial_model:
        # e.g. `mmfed train` on public data: the usual way to make DP fine-tuning work on small sites
        load_checkpoint(model, Path(cfg.initial_model))
    run_dir = RunDir(cfg.run_dir or new_run_dir("fed", cfg.scenario), cfg, list(model.state_dict()))
    plan = Resume()
    if run_dir.existing:
        _check_same_task(run_dir, task)
        plan = run_dir.plan_resume(get_weights(model))
        _check_rounds(run_dir, cfg, plan.done)
    return task, model, run_dir, plan


def _server_evaluator(cfg: FederationConfig, task: Task) -> Callable[[list], dict[str, float]] | None:
    if not cfg.server_test_dir:
        return None
    model_cfg = task.model_config()
    samples = load_manifest(cfg.server_test_dir, labels=list(task.labels), columns=task.columns).split("test")
    data = MultimodalDataset(samples, Processors(task.data, task.modalities))
    if not len(data):
        raise MMFedError(
            f"{cfg.server_test_dir}: server-test-dir has no test samples for this run's modalities"
        )
    model = build_model(model_cfg)
    device = select_device(cfg.device)

    loader = make_loader(data, Collate(task.data, task.modalities), batch_size=256)

    def evaluate_weights(weights: list) -> dict[str, float]:
        set_weights(model, weights)
        result = evaluate(model.to(device), loader, device)
        return {"loss": result.loss, "accuracy": result.accuracy, "examples": result.examples}

    return evaluate_weights


def _model_card(cfg: FederationConfig, task: Task, run_dir: RunDir) -> dict[str, Any]:
    """What every round's checkpoint carries so that it is usable on its own (mmfed.use)."""
    return {
        "task": task.to_dict(),
        "task_hash": task.approval(),
        "run_id": run_dir.run_id,
        "private": cfg.private,
        "secure_aggregation": cfg.secure_aggregation,
        # the text preprocessing the run proposed (a site's policy may add to it)
        "preprocessing": {"deidentify": cfg.deidentify, "mask_diagnosis": cfg.mask_diagnosis},
    }


def _simulated(grid: Grid) -> bool:
    """Flower's simulation engine (`mmfed simulate`, `flwr run` locally) serves the ServerApp an in-memory
    grid; a deployment, a gRPC one to real SuperNodes."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)


def run_server(
    grid: Grid,
    context: Any,
    cfg: FederationConfig,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    if _simulated(grid):  # natural sites decide how many there are; deployed, whoever connects is a site
        cfg = natural_sites(cfg, flwr=True)
    if not cfg.run_dir:
        cfg = cfg.replace(run_dir=str(new_run_dir("fed", cfg.scenario)))
    cfg, _ = resolve_initial_model(cfg)  # pretrained:NAME (flwr run; `mmfed simulate` resolved it already)
    with held(Path(cfg.run_dir), create=not cfg.resume):  # one run at a time in a run directory
        return _run(grid, context, cfg, on_round)


def _run(
    grid: Grid, context: Any, cfg: FederationConfig, on_round: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    task, model, run_dir, plan = open_run(cfg)
    model_cfg = task.model_config()
    done = plan.done
    initial = plan.weights if plan.weights is not None else get_weights(model)
    run_dir.start_resume(plan)
    run_dir.write_config(
        cfg,
        {
            "labels": list(task.labels),
            "model": to_jsonable(model_cfg),
            "data": to_jsonable(task.data),
            "task": task.to_dict(),
            "task_hash": task.approval(),
            "resume_info": {"from_round": done, **({"recovered": plan.note} if plan.note else {})},
        },
    )
    strategy = build_strategy(
        cfg,
        initial,
        run_dir,
        round_offset=done,
        on_round=on_round,
        server_eval=_server_evaluator(cfg, task),
        config_hash=config_hash(model_cfg),
        run_id=run_dir.run_id,
        groups=parameter_groups(list(model.state_dict()), model_cfg.modalities),
        modalities=model_cfg.modalities,
        # every message carries the task: a site reads its manifest through it and checks its approval
        message_config={"task": task.to_json()},
        model_card=_model_card(cfg, task, run_dir),
    )
    if cfg.rounds > done:
        wait_for_sites(grid, cfg.min_sites, cfg.site_wait_s)
        context = LegacyContext(
            context=context, config=ServerConfig(num_rounds=cfg.rounds - done), strategy=strategy
        )
        fit_workflow = secagg.workflow(cfg) if cfg.secure_aggregation else None
        try:
            # a site whose worker died mid-round is named in the round's rows (mmfed.server.lost_sites)
            DefaultWorkflow(fit_workflow=fit_workflow)(SiteNamingGrid(grid, cfg.round_timeout_s), context)
        except WriteError as exc:  # a full disk: every file as it was, the run resumable
            raise MMFedError(
                f"{exc}; the run keeps round {run_dir.last_round()}, its last complete one: once there is "
                "space, continue it with --resume"
            ) from None
        run_dir.commit()  # the last round, when no evaluation row came to commit it
    summary = summarize(run_dir, cfg, strategy)
    write_plots(run_dir.metrics(), run_dir.path, title=f"{task.name}, {cfg.sites} sites")
    if strategy.stopped:
        raise MMFedError(strategy.stopped)
    return summary


def summarize(run_dir: RunDir, cfg: FederationConfig, strategy: RunRecorder) -> dict[str, Any]:
    rows = run_dir.metrics()
    glob = [r for r in rows if r.get("kind") == "global"]
    last = glob[-1] if glob else {}
    sites = {
        r["site"]: r["accuracy"]
        for r in rows
        if r.get("kind") == "evaluate" and r["round"] == last.get("round")
    }
    summary = {
        "rounds_completed": run_dir.last_round(),
        "rounds_planned": cfg.rounds,
        "global_accuracy": last.get("accuracy"),
        "global_loss": last.get("loss"),
        "site_accuracy": sites,
        "stopped": strategy.stopped,
        "run_dir": str(run_dir.path),
        "run_id": run_dir.run_id,
        "private": cfg.private,
        "site_epsilon": strategy.site_epsilon,
        "epsilon_prv_max": max((e["epsilon_prv"] for e in strategy.site_epsilon.values()), default=None),
        "epsilon_rdp_max": max((e["epsilon_rdp"] for e in strategy.site_epsilon.values()), default=None),
        "sites_refused": {r["site"]: r["reason"] for r in rows if r.get("status") == "refused"},
    }
    run_dir.write_summary(summary)
    return summary
