"""Fuzzed model updates (mmfed.federation.params.check_update, encoder_groups.split_site_update): whatever
arrays a site sends, the server gets a verdict — accepted only when the update is finite floating point,
of the model's shapes, within the norm bound, with a coverage vector in [0, 1] — and never an exception."""

from __future__ import annotations

import math
import warnings

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmfed.federation.encoder_groups import encode_update, split_site_update
from mmfed.federation.params import Verdict, check_update

SHAPES = [(3, 4), (4,), (2, 2, 2), ()]
GROUPS = [0, 1, 1, 2]  # shared, two arrays of the first encoder, one of the second
REFERENCE = [np.zeros(s, dtype=np.float32) for s in SHAPES]

any_dtype = st.one_of(
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.boolean_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.unicode_string_dtypes(max_len=3),
    hnp.byte_string_dtypes(max_len=3),
    st.just(np.dtype(object)),
    st.just(np.dtype([("a", "f4"), ("b", "f4")])),
)
objects = st.one_of(st.none(), st.floats(), st.text(max_size=2), st.just([1.0]))


def _array(dtype: np.dtype, shape: tuple) -> st.SearchStrategy:
    elements = objects if dtype == np.dtype(object) else None
    return hnp.arrays(dtype, shape, elements=elements)


any_array = st.tuples(any_dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)).flatmap(
    lambda ds: _array(*ds)
)
float_values = st.floats(width=32) | st.sampled_from([0.0, 1e-3, 1.0, 1e19, 3e38, math.nan, math.inf])


@st.composite
def near_updates(draw) -> list[np.ndarray]:
    """The model's shapes in float32 (sometimes float16/64), with some arrays swapped for anything."""
    out = []
    for shape in SHAPES:
        dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16]))
        out.append(draw(hnp.arrays(dtype, shape, elements=float_values.map(float) if dtype != np.float16
                                   else st.floats(width=16))))  # fmt: skip
    for _ in range(draw(st.integers(0, 2))):
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        change = draw(st.sampled_from(["array", "dtype", "drop", "add", "scale"]))
        if change == "array":
            out[i] = draw(any_array)
        elif change == "dtype":
            out[i] = draw(_array(draw(any_dtype), SHAPES[i % len(SHAPES)]))
        elif change == "drop" and out:
            out.pop(i)
        elif change == "add":
            out.insert(i, draw(any_array))
        elif change == "scale" and out[i].dtype.kind == "f":
            with np.errstate(all="ignore"):
                out[i] = out[i] * draw(st.sampled_from([1e3, 1e30, -1.0, 0.0]))
    return out


clean = st.tuples(*(hnp.arrays(np.float32, s, elements=st.floats(-1, 1, width=32)) for s in SHAPES)).map(list)
updates = clean | near_updates() | st.lists(any_array, max_size=6)
max_norms = st.floats(1e-3, 1e6)


def _is_finite_float(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and bool(np.all(np.isfinite(array)))


def _norm(arrays: list[np.ndarray]) -> float:
    with np.errstate(over="ignore"):
        return float(np.linalg.norm(np.concatenate([a.astype(np.float64).ravel() for a in arrays])))


def _check(update: list[np.ndarray], max_norm: float) -> Verdict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow while squaring a huge update
        verdict = check_update(update, REFERENCE, max_norm)
    assert isinstance(verdict, Verdict) and isinstance(verdict.ok, bool)
    fits = len(update) == len(REFERENCE) and all(
        isinstance(u, np.ndarray | np.generic) and u.shape == r.shape and _is_finite_float(u)
        for u, r in zip(update, REFERENCE, strict=False)
    )
    if verdict.ok:
        assert fits, "an update of the wrong shapes, dtype or values was accepted"
        assert verdict.norm <= max_norm and _norm(update) <= max_norm * (1 + 1e-9)
    else:
        assert verdict.reason
        if fits:
            assert _norm(update) >= max_norm * (1 - 1e-9), f"a good update was rejected: {verdict.reason}"
    return verdict


@given(update=updates, max_norm=max_norms)
@example(update=[np.full(s, 1e200) for s in SHAPES], max_norm=1.0)
@example(update=[np.ones(s, dtype=np.longdouble) for s in SHAPES], max_norm=10.0)
@example(update=[np.ones(s, dtype=np.complex64) for s in SHAPES], max_norm=10.0)
@example(update=[np.array(np.ones(s), dtype=object) for s in SHAPES], max_norm=10.0)
def test_check_update(update, max_norm):
    _check(update, max_norm)


# -- the per-encoder encoding: split, then check (what the server does with every site's update) ----------


def _coverages() -> st.SearchStrategy:
    good = hnp.arrays(np.float32, (3,), elements=st.floats(0, 1, width=32))
    return st.one_of(good, good.map(lambda c: c.astype(np.float64)), any_array,
                     st.sampled_from([np.array([1.0, 0.5 + 1j, 0.0]), np.array([True, False, True]),
                                      np.array([1, 1, 0]), np.array(["1", "1", "1"]), np.array([1.0, 0.0]),
                                      np.array([1.0, np.nan, 1.0]), np.array([1.0, -0.0, 1e-45])])
                     )  # fmt: skip


@given(update=updates, coverage=_coverages(), max_norm=max_norms)
@example(update=[np.ones(s, np.float32) for s in SHAPES], coverage=np.array(["1", "1", "1"]), max_norm=10.0)
@example(update=[np.ones(s, np.float32) for s in SHAPES], coverage=np.array([1, 0.5 + 1j, 1]), max_norm=10.0)
@example(update=[np.ones(s, np.float32) for s in SHAPES], coverage=np.array([None, 1, 1]), max_norm=10.0)
@example(update=[np.array(["a"] * 12).reshape(3, 4), *REFERENCE[1:]], coverage=np.ones(3), max_norm=10.0)
@example(update=[np.ones((3, 4), bool), *REFERENCE[1:]], coverage=np.ones(3, np.float32), max_norm=10.0)
@example(update=REFERENCE, coverage=np.ones(3, np.float32), max_norm=1.0)  # a 0-d array / c is a scalar
def test_split_then_check(update, coverage, max_norm):
    encoded = [*update, coverage]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # dividing a huge update by a tiny coverage
        delta, cov, problem = split_site_update(encoded, GROUPS)
    if delta is None:
        assert cov is None and problem
        return
    assert problem == "" and len(delta) == len(GROUPS)
    assert all(a.dtype.kind == "f" for a in encoded), "non-float arrays were split"
    assert cov.shape == (3,) and np.all(np.isfinite(cov)) and np.all((cov >= 0) & (cov <= 1))
    verdict = _check(delta, max_norm)
    if verdict.ok:
        assert all(_is_finite_float(a) for a in encoded), "an update with NaN, inf or non-floats was accepted"


@given(
    update=st.lists(hnp.arrays(np.float32, st.just((4,)), elements=st.floats(-1, 1, width=32)), min_size=4,
                    max_size=4),
    counts=st.lists(st.integers(0, 50), min_size=3, max_size=3),
)  # fmt: skip
def test_a_well_formed_update_round_trips(update, counts):
    groups, examples = [0, 1, 1, 2], max(counts) or 1
    delta, cov, problem = split_site_update(encode_update(update, groups, counts, examples), groups)
    assert problem == "" and np.allclose(cov, np.array(counts) / examples)
    for d, u, g in zip(delta, update, groups, strict=True):
        assert np.allclose(d, u if cov[g] > 0 else 0 * u, atol=1e-5)
