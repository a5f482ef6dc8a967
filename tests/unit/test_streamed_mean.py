"""The server folds each site's update into the sum as it decodes it: the mean is the batch mean of
every accepted update, bit for bit, and it never holds more than one update as arrays."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from mmfed.federation.params import weighted_mean
from mmfed.server import fedavg


def _results(sites: int, seed: int = 0) -> list[tuple[list[np.ndarray], int]]:
    rng = np.random.default_rng(seed)
    shapes = [(7, 5), (5,), (3, 2, 4), (1,)]
    return [
        (
            [rng.normal(0, 10 ** rng.uniform(-4, 1), s).astype(np.float32) for s in shapes],
            int(rng.integers(1, 500)),
        )
        for _ in range(sites)
    ]


def _fitres(arrays: list[np.ndarray], n: int) -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {})


@pytest.mark.parametrize("sites", [1, 2, 37])
def test_the_streamed_mean_is_the_batch_mean_bit_for_bit(sites):
    updates = _results(sites, seed=sites)
    streamed = fedavg.streamed_mean([_fitres(a, n) for a, n in updates])
    batch = weighted_mean(updates)
    assert len(streamed) == len(batch)
    for s, b in zip(streamed, batch, strict=True):
        assert s.dtype == np.float32 and s.shape == b.shape and np.array_equal(s, b)
    # and it is the example-weighted mean
    total = sum(n for _, n in updates)
    naive = [sum(a[i].astype(np.float64) * n for a, n in updates) / total for i in range(len(batch))]
    for s, m in zip(streamed, naive, strict=True):
        np.testing.assert_allclose(s, m, rtol=1e-5, atol=1e-7)


def test_one_update_at_a_time_is_decoded(monkeypatch):
    updates = _results(20)
    results = [_fitres(a, n) for a, n in updates]
    alive, most = [], 0
    real = fedavg.parameters_to_ndarrays

    def decode(parameters):
        nonlocal most
        arrays = real(parameters)
        alive[:] = [r for r in alive if r() is not None]
        import weakref

        alive.append(weakref.ref(arrays[0]))
        most = max(most, sum(r() is not None for r in alive))
        return arrays

    monkeypatch.setattr(fedavg, "parameters_to_ndarrays", decode)
    fedavg.streamed_mean(results)
    assert most == 1  # the previous site's arrays are gone before the next site's are decoded


def test_no_examples_is_refused():
    with pytest.raises(ValueError, match="no examples"):
        fedavg.streamed_mean([_fitres([np.zeros(2, np.float32)], 0)])
