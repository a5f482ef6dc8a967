"""Fuzzed task files (mmfed.task): whatever a task.toml or the server's task JSON holds, the reader returns
a valid Task — one that survives to_toml/load_task and to_json/from_json unchanged, with the same
approval() — or raises a ConfigError naming the file; never another exception."""

from __future__ import annotations

import datetime
import json
import math
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import event, example, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from mmfed.config import MODALITIES
from mmfed.errors import ConfigError
from mmfed.task import Task, load_task, task_from_dict

WHERE = "the server's task"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-task")


def _note(what: str) -> None:
    if currently_in_test_context():
        event(what)


def _is_valid(task: Task) -> None:
    assert task.name and task.name == task.name.strip()
    assert len(task.labels) >= 2 and len(set(task.labels)) == len(task.labels)
    assert task.modalities and set(task.modalities) <= set(MODALITIES)
    task.data.validate()
    task.model_config().validate()
    spec = task.data.tabular
    for text in (
        [n for n, _ in spec.numeric]
        + [n for n, _ in spec.categorical]
        + [v for _, vs in spec.categorical for v in vs]
    ):  # a manifest cell says name=value;...: these must be writable there
        assert text and text == text.strip() and ";" not in text and "=" not in text, text
    approval = task.approval()
    assert Task.from_json(task.to_json()) == task and Task.from_json(task.to_json()).approval() == approval
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / "task.toml"
        again.write_text(task.to_toml(), encoding="utf-8")
        assert load_task(again) == task and load_task(again).approval() == approval


def _from_file(folder: Path, data: bytes) -> None:
    path = folder / "task.toml"
    path.write_bytes(data)
    try:
        task = load_task(path)
    except ConfigError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        _note("refused")
        return
    _note("accepted")
    _is_valid(task)


def _from_data(data) -> None:
    outcomes = []
    as_json = json.dumps(data, default=str)
    for parse in (lambda: task_from_dict(data, WHERE), lambda: Task.from_json(as_json, WHERE)):
        try:
            task = parse()
        except ConfigError as exc:
            assert WHERE in str(exc), f"the error does not name where the task came from: {exc}"
            outcomes.append(None)
            continue
        _is_valid(task)
        outcomes.append(task)
    if not _has_dates(data):  # JSON has no dates: the server would send them as text
        assert outcomes[0] == outcomes[1], "the same task read from a table and from JSON differs"
    _note("accepted" if outcomes[0] else "refused")


def _has_dates(value) -> bool:
    if isinstance(value, dict):
        return any(_has_dates(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_dates(v) for v in value)
    return isinstance(value, datetime.date | datetime.time)


# -- arbitrary documents --------------------------------------------------------------------------------


@given(data=st.binary(max_size=500))
@example(data=b'[task]\nname = "\xff"\n')
@example(data=b"a = " + b"[" * 5000 + b"]" * 5000)
@example(data=b"a = " + b"1" * 5000)
def test_arbitrary_bytes(folder, data):
    _from_file(folder, data)


@given(text=st.text(max_size=300))
@example(text="[" * 3000)
@example(text='{"task": ' * 3000)
@example(text='{"task": {"name": "\\ud800", "labels": ["a", "b"], "modalities": ["text"]}}')
def test_arbitrary_json_text(text):
    try:
        task = Task.from_json(text, WHERE)
    except ConfigError as exc:
        assert WHERE in str(exc)
        return
    _is_valid(task)


# -- arbitrary tables -----------------------------------------------------------------------------------

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.datetimes(max_value=datetime.datetime(9999, 1, 1)),
    st.sampled_from([0, 1, -1, 2, 3, 4, 8, 64, 0.5, 1e-300, 1e308, "", " ", "a", "b", "image", "text"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
sections = st.sampled_from(["task", "model", "columns", *MODALITIES, "x"])


@given(data=st.dictionaries(sections, values, max_size=4))
def test_arbitrary_tables(folder, data):
    _from_file(folder, tomli_w.dumps(data).encode())
    _from_data(data)


# -- structured but wrong -------------------------------------------------------------------------------

SECTION_KEYS = {
    "task": ["name", "labels", "modalities", "label"],
    "model": ["fusion", "hidden_dim", "image_encoder", "text_encoder", "freeze_text", "attention_heads",
              "dropout", "hidden"],
    "columns": ["id", "label", "split", *MODALITIES, "ID"],
    "image": ["size", "channels", "mean", "std", "sizes"],
    "audio": ["sample_rate", "duration_s", "feature", "n_mels", "n_mfcc", "n_fft", "hop_length", "trim_db"],
    "text": ["max_length", "deidentify", "mask_diagnosis"],
    "video": ["frames", "size", "channels"],
    "tabular": ["numeric", "categorical", "features"],
}  # fmt: skip
GOOD = {
    "task": {"name": "triage", "labels": ["normal", "pneumonia"], "modalities": list(MODALITIES)},
    "columns": {"id": "patient_id", "tabular": ["age", "sex"]},
    "model": {"fusion": "late", "hidden_dim": 32, "attention_heads": 4, "dropout": 0.2},
    "image": {"size": 32, "channels": 3},
    "audio": {"sample_rate": 8000, "duration_s": 0.5},
    "text": {"max_length": 16},
    "video": {"frames": 4},
    "tabular": {"numeric": {"age": 100.0}, "categorical": {"sex": ["M", "F"]}},
}
WRONG = [
    math.nan, math.inf, -math.inf, -1, 0, 2**63 - 1, 1e308, 1.5, True, "", " ", "x" * 200, [], {},
    ["a", "a"], [" a", "a"], ["a"], [1, 2], ["image", "image"], ["tabular"], ["sound"], "image,text",
    {"age": 0.0}, {"age": -1}, {"age": math.nan}, {"": 1.0}, {"a;b": 1.0}, {"age": 1.0, "sex": 1.0},
    {"sex": []}, {"sex": ["M;F"]}, {"sex": [" M"]}, ["age"], ["sex", "age"], "patient_id", "attention",
    "mfcc", 3, 7, 1e-9, datetime.date(2020, 1, 1),
]  # fmt: skip


@st.composite
def near_valid(draw) -> dict:
    data = json.loads(json.dumps(GOOD))
    modalities = draw(st.lists(st.sampled_from(MODALITIES), min_size=1, unique=True))
    data["task"]["modalities"] = modalities
    for section in MODALITIES:
        if section not in modalities or draw(st.booleans()):
            data.pop(section)
    data["columns"] = {k: v for k, v in data["columns"].items() if k in ("id", *modalities)}
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(sorted(SECTION_KEYS)))
        table = data.setdefault(section, {})
        key = draw(st.sampled_from(SECTION_KEYS[section]))
        if draw(st.integers(0, 4)) == 0:
            table.pop(key, None)
        else:
            table[key] = draw(st.sampled_from(WRONG) | scalars)
    return data


@given(data=near_valid())
@example(data={**GOOD, "model": {"attention_heads": 0}})
@example(data={**GOOD, "model": {"attention_heads": -4}})
@example(data={**GOOD, "audio": {"sample_rate": 2**63 - 1, "duration_s": 1e308}})
@example(data={**GOOD, "tabular": {"numeric": {"a;b": 1.0}}, "columns": {}})
@example(data={**GOOD, "tabular": {"categorical": {"sex": [" M", "F"]}}, "columns": {}})
def test_near_valid_tasks(folder, data):
    _from_file(folder, tomli_w.dumps(data).encode())
    _from_data(data)


def test_the_good_task_is_accepted(folder):
    _from_file(folder, tomli_w.dumps(GOOD).encode())
    _is_valid(task_from_dict(GOOD, WHERE))
