"""`initial-model = "pretrained:NAME"`: a model trained centrally on a built-in public scenario once, then
cached (keyed by the recipe, the generator's version and the run's model), trained under a lock in a
temporary folder so concurrent or crashed callers never see half a model."""

import json
import threading

import pytest

from mmfed.errors import ConfigError
from mmfed.federation.config import FederationConfig
from mmfed.federation.run_task import run_task
from mmfed.train import pretrained
from mmfed.train.pretrained import MODEL_FILE, RECIPE_FILE, pretrained_model

NAME = "pretrained:digits-public"
CRASH = "crash the next training"


@pytest.fixture
def fake_training(monkeypatch):
    """train_centralized and the public scenario's build replaced by stand-ins that record each call and
    write a model file: these tests are about the cache, not the training (the slow test trains)."""
    calls = []

    def train_centralized(scenario, run_dir, modalities=None, model_options=None, train=None, **kwargs):
        calls.append({"modalities": modalities, "model": model_options, "epochs": train.epochs})
        if CRASH in calls:
            calls.remove(CRASH)
            run_dir.mkdir(parents=True)
            (run_dir / MODEL_FILE).write_bytes(b"half")
            raise RuntimeError("killed mid-training")
        run_dir.mkdir(parents=True)
        (run_dir / MODEL_FILE).write_bytes(b"weights")
        return {"test_accuracy": 0.99, "test_examples": 360, "seconds": 1.0}

    monkeypatch.setattr("mmfed.train.centralized.train_centralized", train_centralized)
    monkeypatch.setattr("mmfed.data.scenarios.prepare_scenario", lambda *a, **k: "public scenario")
    return calls


def task(**changes):
    return run_task(FederationConfig(**{"scenario": "digits-av", **changes}))


def test_trained_once_then_loaded_from_the_cache(tmp_path, fake_training):
    first = pretrained_model(NAME, task(), tmp_path)
    assert first.trained and first.path.read_bytes() == b"weights"
    assert first.path.parent.parent == tmp_path / "pretrained" and first.path.parent.name.startswith(
        "digits-public-"
    )
    recipe = json.loads((first.path.parent / RECIPE_FILE).read_text())
    assert recipe["public_test_accuracy"] == 0.99 and recipe["settings"]["scenario"] == "digits-public"
    from mmfed.data.scenarios.digits_public import GENERATOR_VERSION

    assert recipe["settings"]["generator_version"] == GENERATOR_VERSION
    second = pretrained_model(NAME, task(), tmp_path)
    assert not second.trained and second.path == first.path and second.summary == first.summary
    assert len(fake_training) == 1
    assert [p.name for p in (tmp_path / "pretrained").iterdir() if ".tmp-" in p.name] == []  # nothing left


def test_another_model_or_generator_version_is_another_cache_entry(tmp_path, fake_training, monkeypatch):
    attention = pretrained_model(NAME, task(), tmp_path)
    late = pretrained_model(NAME, task(fusion="late"), tmp_path)
    assert late.trained and late.path != attention.path and fake_training[-1]["model"]["fusion"] == "late"
    from mmfed.data.scenarios import digits_public

    monkeypatch.setattr(digits_public, "GENERATOR_VERSION", digits_public.GENERATOR_VERSION + 1)
    newer = pretrained_model(NAME, task(), tmp_path)
    assert newer.trained and newer.path != attention.path
    assert attention.path.is_file() and len(fake_training) == 3


def test_a_crashed_training_leaves_nothing_and_the_next_call_trains(tmp_path, fake_training):
    fake_training.append(CRASH)
    with pytest.raises(RuntimeError, match="killed"):
        pretrained_model(NAME, task(), tmp_path)
    assert len(fake_training) == 1
    assert not any(p.is_dir() for p in (tmp_path / "pretrained").iterdir())  # no model, no temporary folder
    assert pretrained_model(NAME, task(), tmp_path).trained and len(fake_training) == 2


def test_concurrent_runs_train_once(tmp_path, fake_training):
    results = []
    threads = [threading.Thread(target=lambda: results.append(pretrained_model(NAME, task(), tmp_path)))
               for _ in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_training) == 1 and sum(r.trained for r in results) == 1
    assert len({r.path for r in results}) == 1


def test_unknown_names_and_unfit_tasks_are_refused(tmp_path, fake_training):
    with pytest.raises(ConfigError, match="pretrained:digits-public"):
        FederationConfig(initial_model="pretrained:imagenet").validate()
    FederationConfig(initial_model=NAME).validate()
    with pytest.raises(ConfigError, match="no text data"):
        pretrained_model(NAME, task(scenario="synthetic", modalities="image,text"), tmp_path)
    assert fake_training == []


def test_the_run_config_carries_the_cached_file(tmp_path, fake_training):
    from mmfed.server.prepare import resolve_initial_model

    cfg = FederationConfig(scenario="digits-av", initial_model=NAME, cache_dir=str(tmp_path))
    resolved, found = resolve_initial_model(cfg)
    assert resolved.initial_model == str(found.path) and found.path.is_file()
    assert resolve_initial_model(resolved) == (resolved, None)  # a file is left as it is


@pytest.mark.slow  # a real (one-epoch) pretraining on a small public set, ~15 s
def test_a_real_pretrained_model_starts_the_runs_model(tmp_path, monkeypatch):
    import dataclasses

    from mmfed.checkpoint import load_checkpoint
    from mmfed.data.scenarios import digits_av, digits_public
    from mmfed.models import build_model
    from mmfed.server.prepare import resolve_initial_model

    monkeypatch.setattr(digits_public, "PER_VOICE", 20)
    recipe = pretrained.RECIPES["digits-public"]
    monkeypatch.setitem(
        pretrained.RECIPES,
        "digits-public",
        dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=1)),
    )
    monkeypatch.setattr(digits_av, "synthesize", _tone)
    cfg = FederationConfig(scenario="digits-av", initial_model=NAME, cache_dir=str(tmp_path), device="cpu")
    resolved, found = resolve_initial_model(cfg)
    assert found.trained and 0.0 <= found.summary["public_test_accuracy"] <= 1.0
    model = build_model(run_task(resolved).model_config())
    meta = load_checkpoint(model, found.path)  # the run's model, exactly
    assert meta["kind"] == "centralized"


def _tone(text, voice="en", rate=175, pitch=50, pitch_range=50):
    import numpy as np

    t = np.arange(6615) / 22050
    return (0.5 * np.sin(2 * np.pi * (100 + pitch + 20 * len(text)) * t)).astype(np.float32), 22050
