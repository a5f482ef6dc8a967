"""Fuzzed run configs (mmfed.federation.config): whatever a scenario TOML or Flower's run config holds,
FederationConfig.from_toml / from_mapping return a config that validate()s, whose every setting has its
declared type and was given as that type (or as its text), or raise a ConfigError naming the setting —
never another exception, never a value of the wrong kind quietly converted."""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path

import pytest
import tomli_w
from hypothesis import example, given
from hypothesis import strategies as st

from mmfed.errors import ConfigError
from mmfed.federation.config import FederationConfig
from mmfed.federation.settings import PYTHON_TYPES, declared

SETTINGS = {s.name: s for s in declared()}
KEYS = sorted({*(s.key for s in SETTINGS.values()), *SETTINGS, "num-server-rounds"})
DEFAULTS = FederationConfig().to_run_config()


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config") / "run.toml"


def _name(key: str) -> str:
    name = key.replace("-", "_")
    return "rounds" if name == "num_server_rounds" else name


def _given_as_its_kind(kind: str, value) -> bool:
    """What a setting of `kind` may be given as: its own type, or text (Flower's and the CLI's)."""
    if isinstance(value, str):
        return True
    if kind == "bool":
        return isinstance(value, bool) or (type(value) is int and value in (0, 1))
    if isinstance(value, bool):
        return False
    if kind == "int":
        return type(value) is int or (type(value) is float and value.is_integer())
    return type(value) in (int, float)


def _is_valid(cfg: FederationConfig, given: dict) -> None:
    cfg.validate()
    for f in dataclasses.fields(cfg):
        assert type(getattr(cfg, f.name)) is PYTHON_TYPES[str(f.type)], f.name
    for key, value in given.items():
        assert _given_as_its_kind(SETTINGS[_name(key)].kind, value), f"{key} = {value!r} was accepted"
    assert FederationConfig.from_mapping(cfg.to_run_config()) == cfg


def _named(exc: ConfigError, given: dict) -> None:
    assert exc.setting in given or exc.setting in SETTINGS or exc.setting.replace("-", "_") in SETTINGS, (
        f"the error names no setting: {exc}"
    )


def _from_mapping(values: dict) -> None:
    try:
        cfg = FederationConfig.from_mapping(values)
    except ConfigError as exc:
        _named(exc, values)
        return
    _is_valid(cfg, values)


def _from_toml(path: Path, data: bytes, given: dict | None = None) -> None:
    path.write_bytes(data)
    try:
        cfg = FederationConfig.from_toml(path)
    except ConfigError as exc:
        if exc.setting == "config":
            assert str(path) in str(exc), f"the error does not name the file: {exc}"
        else:
            _named(exc, given or {exc.setting: None})
        return
    if given is not None:
        _is_valid(cfg, given)


# -- arbitrary documents --------------------------------------------------------------------------------


@given(data=st.binary(max_size=400))
@example(data=b"rounds = 3 # \xff\n")
@example(data=b"rounds = " + b"9" * 5000 + b"\n")
@example(data=b"x = " + b"[" * 5000 + b"]" * 5000)
@example(data=b"federation = 3\n")
def test_arbitrary_bytes(path, data):
    _from_toml(path, data)


# -- arbitrary settings and values ----------------------------------------------------------------------

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.datetimes(max_value=datetime.datetime(9999, 1, 1)),
    st.sampled_from(
        [0, 1, 2, -1, 0.5, 1.0, 2.5, 1e300, math.nan, math.inf, "", "true", "no", "1", "1.5", "nan", "inf",
         "1e3", " 7 ", "cpu", "cuda:1", "cuda:\u0661", "iid", "dirichlet:0.1", "dirichlet:nan",
         "natural:ward", "image,audio", "digits-av", "synthetic", "late", "sgd"]
    ),
)  # fmt: skip
values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars, max_size=2)
mappings = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6)


@given(values=mappings)
@example(values={"rounds": True})
@example(values={"fraction-fit": True})
@example(values={"deidentify": 5})
@example(values={"augment": [0]})
@example(values={"task": ["a.toml"]})
@example(values={"run-dir": {"a": 1}})
@example(values={"device": "cuda:\u0661"})
def test_arbitrary_mappings(values):
    _from_mapping(values)


@given(values=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6))
def test_arbitrary_toml_tables(path, values):
    _from_toml(path, tomli_w.dumps({"federation": values}).encode(), values)
    _from_toml(path, tomli_w.dumps(values).encode(), values)


@example(stray={"rounds": 50})
@given(stray=st.dictionaries(st.sampled_from(KEYS) | st.text(min_size=1, max_size=8), scalars, min_size=1))
def test_settings_outside_the_federation_table_are_refused(path, stray):
    stray.pop("federation", None)
    if stray:
        path.write_text(tomli_w.dumps({**stray, "federation": {"rounds": 2}}))
        with pytest.raises(ConfigError):
            FederationConfig.from_toml(path)


# -- near-valid configs ---------------------------------------------------------------------------------


@st.composite
def near_valid(draw) -> dict:
    keys = draw(st.lists(st.sampled_from(sorted(DEFAULTS)), max_size=6, unique=True))
    out = {k: DEFAULTS[k] for k in keys}
    for key in draw(st.lists(st.sampled_from(sorted(DEFAULTS)), max_size=2)):
        out[key] = draw(scalars)
    return out


@given(values=near_valid())
def test_near_valid_configs(path, values):
    _from_mapping(values)
    _from_toml(path, tomli_w.dumps({"federation": values}).encode(), values)


def test_every_scenario_file_reads():
    for toml in sorted((Path(__file__).parents[2] / "simulations").glob("*.toml")):
        FederationConfig.from_toml(toml).validate()


@pytest.mark.parametrize("device", ["cuda:\u0661", "cuda:\uff11", "cuda:", "gpu", "cuda:0 "])
def test_device_with_digits_torch_cannot_read_is_refused(device):
    with pytest.raises(ConfigError, match="device"):
        FederationConfig(device=device).validate()
