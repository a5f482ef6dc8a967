"""Models pretrained centrally on a built-in PUBLIC scenario, trained once and cached: what a run's
`initial-model = "pretrained:NAME"` names (`make run`: `pretrained:digits-public`).

DP-SGD on a few hundred records per site learns little from random weights (the noise grows with the
trained parameters); fine-tuning the fusion and classifier of a model pretrained on public data works
(BENCHMARKS.md, "Accuracy under differential privacy"). A recipe names the public scenario and the
training settings; the model settings (fusion, encoders, modalities) are the run's, so the weights fit
the run's model. The result is cached in CACHE/pretrained/<name>-<key>/ (model.safetensors, its .json,
recipe.json with the public test accuracy), keyed by the recipe, the public generator's version and the
run's model settings: trained in a temporary folder renamed into place, under a lock, so concurrent
callers train once, a crash leaves nothing that is used, and a later run loads it at once.

Every hyper-parameter here was chosen on the public scenario's own test split, none on a site's data
(that would spend privacy the ledgers do not record).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfed.config import TrainConfig, config_hash, to_jsonable
from mmfed.errors import ConfigError, MMFedError

PREFIX = "pretrained:"
MODEL_FILE = "model.safetensors"
RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class Recipe:
    scenario: str  # a built-in scenario whose data is public (no site holds any of it)
    generator: str  # module under mmfed.data.scenarios with its GENERATOR_VERSION
    train: TrainConfig


RECIPES: dict[str, Recipe] = {
    # typeset digits + spoken digits in voices no digits-av site has (mmfed.data.scenarios.digits_public)
    "digits-public": Recipe(
        "digits-public", "digits_public", TrainConfig(epochs=10, batch_size=64, lr=2e-3, seed=0)
    ),
    # MNIST images no fsdd-mnist site holds + synthetic speech (mmfed.data.scenarios.fsdd_mnist_public);
    # reads the run's data-dir, and is built for the run's seed (which decides the sites' images)
    "fsdd-mnist-public": Recipe(
        "fsdd-mnist-public", "fsdd_mnist_public", TrainConfig(epochs=5, batch_size=64, lr=2e-3, seed=0)
    ),
}


def is_pretrained(value: str) -> bool:
    return value.startswith(PREFIX)


def check_name(value: str) -> None:
    """`pretrained:NAME` must name a recipe (the initial-model setting's check; no torch imported)."""
    if is_pretrained(value) and value[len(PREFIX) :] not in RECIPES:
        known = ", ".join(PREFIX + n for n in RECIPES)
        raise ConfigError("initial-model", f"{value!r}: no such pretrained model; built in: {known}")


@dataclass(frozen=True)
class Pretrained:
    path: Path  # model.safetensors
    trained: bool  # this call trained it (False: it was in the cache)
    summary: dict[str, Any]  # what recipe.json holds: the recipe, the key, the public test accuracy


def reads_data(name: str) -> bool:
    """The recipe's public scenario reads real data (the run's data-dir), and is built per run seed."""
    from mmfed.data.scenarios import builtin

    return bool(builtin(RECIPES[name].scenario).needs)


def cache_root(
    name: str, task, cache_dir: Path, data_dir: Path | None = None, seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """Where the model of recipe `name` for this task's model lives, and the settings that key it."""
    import importlib

    recipe = RECIPES[name]
    module = importlib.import_module(f"mmfed.data.scenarios.{recipe.generator}")
    settings = {
        "recipe": name,
        "scenario": recipe.scenario,
        "generator_version": module.GENERATOR_VERSION,
        "train": {k: v for k, v in to_jsonable(recipe.train).items() if k not in ("device", "num_workers")},
        "modalities": list(task.modalities),
        "model": dataclasses.asdict(task.model),
        "data": {m: to_jsonable(getattr(task.data, m)) for m in task.modalities},
    }
    if reads_data(name):  # the public set is the data folder's images no site of this seed holds
        settings |= {"data_dir": str(Path(data_dir).resolve()), "sites_seed": int(seed)}
    return Path(cache_dir) / "pretrained" / f"{name}-{config_hash(settings)[:12]}", settings


def pretrained_model(
    value: str,
    task,
    cache_dir: Path,
    device: str = "auto",
    on_train: Callable[[str], None] | None = None,
    progress=None,
    data_dir: str | Path | None = None,
    seed: int = 0,
) -> Pretrained:
    """The cached model `value` (`pretrained:NAME`) names for `task`'s model, trained first if needed.
    `on_train(message)` is called before a training starts; `progress` is train_centralized's hooks.
    `data_dir` and `seed` are the run's: what a public scenario that reads real data needs."""
    check_name(value)
    name = value[len(PREFIX) :]
    _check_fits(name, task)
    if reads_data(name) and not data_dir:
        from mmfed.data.scenarios import builtin

        raise ConfigError(
            "data-dir", f"{value} trains on public data read from data-dir: give the folder with "
            f"{builtin(RECIPES[name].scenario).needs.removeprefix('a folder with ')}",
        )  # fmt: skip
    root, settings = cache_root(name, task, cache_dir, data_dir, seed)
    found = _cached(root, settings)
    if found is not None:
        return Pretrained(root / MODEL_FILE, False, found)
    from mmfed.files import locked

    root.parent.mkdir(parents=True, exist_ok=True)
    with locked(root.parent / f".{root.name}"):
        found = _cached(root, settings)  # another process may have trained it while we waited
        if found is not None:
            return Pretrained(root / MODEL_FILE, False, found)
        summary = _train(
            name, task, root, settings, Path(cache_dir), device, on_train, progress, data_dir, seed
        )
    return Pretrained(root / MODEL_FILE, True, summary)


def _cached(root: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    try:
        stored = json.loads((root / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("settings") != settings or not (root / MODEL_FILE).is_file():
        return None
    return stored


def _check_fits(name: str, task) -> None:
    """The public scenario must hold the run's classes and modalities with the same tensor settings."""
    from mmfed.data.scenarios import describe_scenario

    public = describe_scenario(RECIPES[name].scenario)
    problem = None
    if tuple(public.labels) != tuple(task.labels):
        problem = f"its classes are {', '.join(public.labels)}, the run's {', '.join(task.labels)}"
    elif missing := [m for m in task.modalities if m not in public.modalities]:
        problem = f"it has no {', '.join(missing)} data (it has {', '.join(public.modalities)})"
    elif other := [m for m in task.modalities if getattr(public.spec, m) != getattr(task.data, m)]:
        problem = f"its {', '.join(other)} tensor settings differ from the run's"
    if problem:
        raise ConfigError(
            "initial-model", f"{PREFIX}{name} cannot start this run's model: {problem}; give a model file"
        )


def _train(
    name, task, root, settings, cache_dir, device, on_train, progress, data_dir, seed
) -> dict[str, Any]:
    import os
    import shutil
    import tempfile

    from mmfed.data.scenarios import prepare_scenario
    from mmfed.train.centralized import train_centralized

    recipe = RECIPES[name]
    if on_train:
        on_train(
            f"pretraining {PREFIX}{name} on the public scenario {recipe.scenario} (once, cached: {root})"
        )
    for leftover in root.parent.glob(f".{root.name}.tmp-*"):  # under the lock: from a crashed training
        shutil.rmtree(leftover, ignore_errors=True)
    import torch

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    threads = torch.get_num_threads()
    # one intra-op thread: the model is small, and a second thread only spins (measured on 2 cores: the
    # same seconds per epoch, twice the CPU time — which, on a busy machine, other processes then lack)
    torch.set_num_threads(1)
    try:
        if reads_data(name):  # built for the run's seed: the images its sites do not hold
            scenario = prepare_scenario(recipe.scenario, data_dir=data_dir, cache_dir=cache_dir, seed=seed)
        else:
            scenario = prepare_scenario(recipe.scenario, cache_dir=cache_dir, seed=recipe.train.seed)
        run = tmp / "run"
        result = train_centralized(
            scenario,
            run,
            modalities=task.modalities,
            model_options=dataclasses.asdict(task.model),
            train=dataclasses.replace(recipe.train, device=device),
            cache_dir=cache_dir,
            progress=progress,
        )
        summary = {
            "settings": settings,
            "public_test_accuracy": result["test_accuracy"],
            "public_test_examples": result["test_examples"],
            "seconds": result["seconds"],
        }
        (run / RECIPE_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")  # last
        if root.exists():  # a stale model of the same key (its recipe.json unreadable): replaced
            shutil.rmtree(root)
        os.rename(run, root)
    except OSError as exc:
        raise MMFedError(f"{root}: the pretrained model could not be written ({exc}); nothing kept") from None
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
