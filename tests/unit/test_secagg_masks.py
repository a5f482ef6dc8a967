"""SecAgg+'s mask generator (mmfed.federation.masks): a keystream of the whole seed, used identically by
the sites' mod and the server's workflow (the masked sum unmasks to the plain sum, with a site dropping
out), announced by the server and refused by a site when it is not its own."""

import threading

import numpy as np
import pytest
from flwr.client import ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from mmfed.federation import masks, secagg
from mmfed.federation.outcome import SiteOutcome
from mmfed.server.local_grid import LocalGrid, server_context
from mmfed.site.client import maybe_secaggplus_mod

RING = 2**40
SHAPES = [(3, 4), (5,), (1,), (2, 3, 2)]  # (Flower never applies its offset to a 0-d array)


def test_the_keystream_uses_the_whole_seed_and_is_uniform_in_the_ring():
    seed = bytes(range(32))
    a = masks.mask(seed, RING, 100_000)
    assert a.dtype == np.uint64 and np.array_equal(a, masks.mask(seed, RING, 100_000))
    assert int(a.max()) < RING and int(a.max()) > RING * 0.99  # every bit of the ring used
    for i in (0, 20, 31):  # the upper half counts too (Flower's generator folded it into 32 bits)
        flipped = bytearray(seed)
        flipped[i] ^= 0x01
        assert np.mean(masks.mask(bytes(flipped), RING, 100_000) == a) < 1e-3, i
    assert not np.array_equal(masks.mask(bytes(32), RING, 1000), masks.mask(b"\x01" + bytes(31), RING, 1000))
    assert abs(float(a.mean()) / RING - 0.5) < 0.01  # uniform: mean half the ring
    assert int(masks.mask(seed, 2**8, 10_000).max()) < 2**8
    with pytest.raises(ValueError, match="power of two"):
        masks.mask(seed, 10**12, 4)


def test_the_list_form_cuts_the_flat_keystream_in_order():
    seed = b"k" * 44  # Flower's pairwise seeds are urlsafe-base64 keys
    parts = masks.pseudo_rand_gen(seed, RING, SHAPES)
    assert [p.shape for p in parts] == SHAPES and all(p.dtype == np.int64 for p in parts)
    flat = masks.mask(seed, RING, sum(int(np.prod(s)) for s in SHAPES)).view(np.int64)
    assert np.array_equal(np.concatenate([p.ravel() for p in parts]), flat)


class _Site(NumPyClient):
    def __init__(self, p: int, updates, weights, drop: set[int]):
        self.p, self.updates, self.weights, self.drop = p, updates, weights, drop

    def fit(self, parameters, config):
        if self.p in self.drop:
            raise RuntimeError("lost after key sharing")
        return [u.copy() for u in self.updates[self.p]], self.weights[self.p], {}


class _Capture(FedAvg):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.aggregates, self.failures = [], []

    def aggregate_fit(self, server_round, results, failures):
        self.aggregates += [parameters_to_ndarrays(r.parameters) for _, r in results]
        self.failures += failures
        return super().aggregate_fit(server_round, results, failures)


def _round(sites: int, updates, weights, drop=frozenset()) -> _Capture:
    app = ClientApp(
        client_fn=lambda ctx: _Site(int(ctx.node_config["partition-id"]), updates, weights, drop).to_client(),
        mods=[maybe_secaggplus_mod],
    )
    grid = LocalGrid(app, sites)
    strategy = _Capture(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=sites, min_available_clients=sites,
        initial_parameters=ndarrays_to_parameters([np.zeros(s, np.float32) for s in SHAPES]),
    )  # fmt: skip
    flow = secagg.ReportingSecAggPlus(
        num_shares=1.0, reconstruction_threshold=0.5, max_weight=1000.0, clipping_range=1.0,
        quantization_range=secagg.QUANTIZATION_RANGE, modulus_range=secagg.MODULUS_RANGE,
    )  # fmt: skip
    context = LegacyContext(context=server_context(), config=ServerConfig(num_rounds=1), strategy=strategy)
    try:
        DefaultWorkflow(fit_workflow=flow)(grid, context)
    finally:
        grid.close()
    return strategy


def _updates(sites: int):
    rng = np.random.default_rng(7)
    updates = [[rng.uniform(-0.9, 0.9, s).astype(np.float32) for s in SHAPES] for _ in range(sites)]
    return updates, [10 * (p + 1) for p in range(sites)]


def _mean(updates, weights, names):
    total = sum(weights[p] for p in names)
    return [sum(updates[p][i].astype(np.float64) * weights[p] for p in names) / total for i in range(4)]


@pytest.mark.parametrize("drop", [set(), {2}])
def test_the_masked_sum_unmasks_to_the_plain_sum(drop, monkeypatch):
    calls = {"n": 0}
    real = masks._keystream

    def counted(*args):
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(masks, "_keystream", counted)
    sites = 6
    updates, weights = _updates(sites)
    strategy = _round(sites, updates, weights, drop=drop)
    # (Flower reports a failure of the masking stage twice)
    assert strategy.aggregates and len({str(f) for f in strategy.failures}) == len(drop)
    want = _mean(updates, weights, [p for p in range(sites) if p not in drop])
    for got, expected in zip(strategy.aggregates[0], want, strict=True):
        assert got.shape == expected.shape
        # one quantisation level (2 / 2**30) per site at most: anything else would be a mask left over
        assert np.max(np.abs(got - expected)) < 1e-7
    # every mask, at the sites and at the server, came from this generator: each site one private and
    # one per neighbour, the server one per survivor's private mask (+ the dropped site's pairwise ones)
    survivors = sites - len(drop)
    assert calls["n"] == survivors * sites + survivors + len(drop) * (sites - 1)


def test_a_site_refuses_a_round_whose_generator_is_not_its_own(monkeypatch):
    class Other(secagg._Announcing):
        def send_and_receive(self, messages, *args, **kwargs):
            messages = list(messages)
            for m in messages:
                m.content.config_records["secaggplus_configs"][masks.ANNOUNCE_KEY] = "numpy-randomstate-32"
            return self._grid.send_and_receive(messages, *args, **kwargs)

    monkeypatch.setattr(secagg, "_Announcing", Other)
    updates, weights = _updates(3)
    strategy = _round(3, updates, weights)
    assert not strategy.aggregates
    outcomes = [SiteOutcome.from_text(str(f)) for f in strategy.failures]
    assert len(outcomes) == 3
    for o in outcomes:
        assert o.status == "refused" and o.code == "secagg-generator", o
        assert "mask generator" in o.message


def test_a_server_announcing_no_generator_is_refused():
    from mmfed.site.client import MaskGeneratorRefusal, check_mask_generator

    with pytest.raises(MaskGeneratorRefusal, match="announces none as its mask generator"):
        check_mask_generator({}, "site_a")
    check_mask_generator({masks.ANNOUNCE_KEY: masks.GENERATOR}, "site_a")


def test_outside_mmfed_code_flower_keeps_its_own_generator():
    import importlib

    from flwr.common.secure_aggregation import secaggplus_utils

    secaggplus_workflow = importlib.import_module(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
    )
    masks.install()
    seed = bytes(range(32))
    flower = secaggplus_utils.pseudo_rand_gen(seed, RING, [(8,)])[0]
    assert np.array_equal(secaggplus_workflow.pseudo_rand_gen(seed, RING, [(8,)])[0], flower)
    with masks.using():
        ours = secaggplus_workflow.pseudo_rand_gen(seed, RING, [(8,)])[0]
    assert np.array_equal(ours, masks.pseudo_rand_gen(seed, RING, [(8,)])[0])
    assert not np.array_equal(ours, flower)
    # the flag is per context: another thread outside `using()` is not switched
    seen = []
    with masks.using():
        t = threading.Thread(target=lambda: seen.append(masks.active()))
        t.start()
        t.join()
    assert seen == [False]
