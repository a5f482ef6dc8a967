"""Fuzzed site.toml (mmfed.privacy.policy.load_policy): whatever the file holds, the reader returns a
SitePolicy whose every bound is in the range the module documents, or raises a ConfigError naming the
file (and the key, when one key is wrong) — never another exception."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
import tomli_w
from hypothesis import example, given
from hypothesis import strategies as st

from mmfed.config import MODALITIES
from mmfed.errors import ConfigError
from mmfed.privacy.policy import BOOLEAN_KEYS, SitePolicy, load_policy

KEYS = [f.name for f in SitePolicy.__dataclass_fields__.values() if f.name != "source"]
LIMIT_KEYS = ["max_image_pixels", "max_audio_seconds", "max_video_seconds", "max_file_mb", "max_mb"]


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-policy") / "site.toml"


def _is_valid(policy: SitePolicy) -> None:
    assert isinstance(policy, SitePolicy)
    assert 0 < policy.max_epsilon < math.inf
    assert 0 < policy.delta < 1
    assert 0 <= policy.min_noise_multiplier < math.inf
    assert policy.max_clipping_norm > 0  # inf: no cap
    assert 0 < policy.max_sample_rate <= 1
    assert type(policy.public_examples) is int and policy.public_examples >= 0
    for key in ("allowed_modalities", "held_modalities"):
        assert set(getattr(policy, key)) <= set(MODALITIES)
    assert all(isinstance(m, str) for m in policy.approved_models)
    assert all(type(getattr(policy, key)) is bool for key in BOOLEAN_KEYS)
    for key in ("max_epsilon", "delta", "min_noise_multiplier", "max_clipping_norm", "max_sample_rate"):
        assert type(getattr(policy, key)) is float


def _load(path: Path, data: bytes, key: str | None = None) -> None:
    path.write_bytes(data)
    try:
        policy = load_policy(path)
    except ConfigError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        if key is not None:
            assert f"privacy.{key}" in str(exc), f"the error does not name the key: {exc}"
        return
    _is_valid(policy)


@given(data=st.binary(max_size=400))
@example(data=b"[privacy]\nmax_epsilon = 8.0 # \xe9\n")
@example(data=b"privacy = 1\n")
@example(data=b'privacy = "all"\n')
@example(data=b"[privacy]\nmax_epsilon = " + b"9" * 5000 + b"\n")
@example(data=b"x = " + b"[" * 5000)
def test_arbitrary_bytes(path, data):
    _load(path, data)


def test_a_folder_named_site_toml(path):
    path.unlink(missing_ok=True)
    path.mkdir()
    try:
        with pytest.raises(ConfigError, match="site.toml"):
            load_policy(path)
    finally:
        path.rmdir()


scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.datetimes(max_value=datetime.datetime(9999, 1, 1)),
    st.sampled_from([0, 1, -1, 0.0, -0.0, 1e-300, 5e-324, 1.0, 1.0000001, 2**53 + 1, 1e308, *MODALITIES]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@given(tables=st.dictionaries(st.sampled_from(["privacy", "policy", "data"]) | st.text(max_size=5), values))
@example(tables={"privacy": [1, 2]})
def test_arbitrary_tables(path, tables):
    _load(path, tomli_w.dumps(tables).encode())


@given(
    privacy=st.dictionaries(
        st.sampled_from([*KEYS, "max_eps", "epsilon", "Delta"]) | st.text(max_size=6),
        values | st.sampled_from([math.nan, math.inf, -math.inf, ["image", "sound"], ["image"], []]),
        max_size=5,
    )
)
def test_arbitrary_privacy_values(path, privacy):
    _load(path, tomli_w.dumps({"privacy": privacy}).encode())


@given(
    key=st.sampled_from(KEYS),
    value=scalars | st.sampled_from([math.nan, math.inf, -math.inf, [], ["image"], ["sound"], [1]]),
)
@example(key="max_epsilon", value=math.nan)
@example(key="max_epsilon", value=math.inf)
@example(key="delta", value=1)
@example(key="min_noise_multiplier", value=math.inf)
@example(key="max_sample_rate", value=-0.0)
@example(key="public_examples", value=True)
def test_one_wrong_key_is_named(path, key, value):
    _load(path, tomli_w.dumps({"privacy": {key: value}}).encode(), key=key)


def test_the_template_reads_back(path):
    _load(path, SitePolicy().template().encode())
    assert load_policy(path) == SitePolicy(source=str(path))


@given(
    limits=st.dictionaries(
        st.sampled_from(LIMIT_KEYS),
        values | st.sampled_from([math.nan, math.inf, 1e308, 2**63 - 1, 0, -1, 0.5]),
        max_size=4,
    )
)
@example(limits={"max_file_mb": 1e308})
def test_arbitrary_data_limits(path, limits):
    """site.toml's [data] table (mmfed.data.limits): finite limits > 0 that the file checks can use."""
    from mmfed.data.limits import parse_limits

    _load(path, tomli_w.dumps({"privacy": {}, "data": limits}).encode())
    try:
        parsed = parse_limits(limits, str(path))
    except ConfigError as exc:
        assert str(path) in str(exc) and "data." in str(exc)
        return
    assert type(parsed.max_image_pixels) is int and parsed.max_image_pixels > 0
    for key in ("max_audio_seconds", "max_video_seconds", "max_file_mb"):
        assert 0 < getattr(parsed, key) < math.inf
    assert isinstance(parsed.max_file_bytes, int) and parsed.max_file_bytes >= 0
