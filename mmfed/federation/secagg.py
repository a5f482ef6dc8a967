"""Secure aggregation with Flower's SecAgg+: settings that scale from 3 to 1,000 sites, and the site-side
range check that keeps quantisation from saturating silently.

SecAgg+ (client mod) multiplies a site's update by examples / max_weight, clips every value to
±clipping_range and quantises it (here to 2**30 levels); the server only learns the masked sum, divided by the
summed weights. A value outside the range would be clipped without anyone noticing, so each site checks
its scaled update first and, if it does not fit, drops out of the round with a message naming the setting
to change (secagg-clipping-range or secagg-max-examples). The scale is the run's, known to the server.

The masks come from mmfed's generator (mmfed.federation.masks: ChaCha20 keyed by the whole seed, not
Flower's 32-bit-seeded RandomState); the workflow announces it in the setup stage and uses it to unmask.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from mmfed.errors import MMFedError
from mmfed.federation import masks
from mmfed.federation.config import FederationConfig

QUANTIZATION_RANGE = 2**30
MODULUS_RANGE = 2**40


class SecAggRangeError(MMFedError):
    """A site's update does not fit SecAgg+'s quantisation range; it is not sent. `code` says which setting
    the server must raise: secagg-weight (secagg-max-examples) or secagg-range (secagg-clipping-range)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def shares(sites: int) -> tuple[int | float, int | float]:
    """(num_shares, reconstruction_threshold). Up to 20 sites every site shares with all others
    (threshold half of them); beyond, each shares with 2*ceil(log2 n)+1 neighbours (SecAgg+'s
    logarithmic graph) and a majority of those must survive to unmask."""
    if sites <= 20:
        return 1.0, 0.5
    neighbours = min(sites, 2 * math.ceil(math.log2(sites)) + 1)
    return neighbours, neighbours // 2 + 1


class _Announcing:
    """The grid, with the mask generator written into the setup stage's SecAgg+ config."""

    def __init__(self, grid):
        self._grid = grid

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        for msg in messages:
            configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs.get(Key.STAGE) == Stage.SETUP:
                configs[masks.ANNOUNCE_KEY] = masks.GENERATOR
        return self._grid.send_and_receive(messages, *args, **kwargs)


class ReportingSecAggPlus(SecAggPlusWorkflow):
    """When too few sites are left, Flower's SecAgg+ halts the round without calling the strategy, so the
    model silently stays as it was. Here the strategy is handed the round's failures instead: they are
    logged per site and the run stops with the reason. The round unmasks with mmfed's mask generator,
    which the setup stage announces (a site refuses any other)."""

    def __call__(self, grid, context) -> None:
        masks.install()
        with masks.using():
            super().__call__(grid, context)

    def _report(self, ok: bool, context, state) -> bool:
        if not ok:
            current = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
            context.strategy.aggregate_fit(current, [], state.failures)
        return ok

    def setup_stage(self, grid, context, state) -> bool:
        return self._report(super().setup_stage(_Announcing(grid), context, state), context, state)

    def share_keys_stage(self, grid, context, state) -> bool:
        return self._report(super().share_keys_stage(grid, context, state), context, state)

    def collect_masked_vectors_stage(self, grid, context, state) -> bool:
        return self._report(super().collect_masked_vectors_stage(grid, context, state), context, state)

    def unmask_stage(self, grid, context, state) -> bool:
        return self._report(super().unmask_stage(grid, context, state), context, state)


def workflow(cfg: FederationConfig) -> SecAggPlusWorkflow:
    masks.install()
    sampled = max(round(cfg.sites * cfg.fraction_fit), 2)
    num_shares, threshold = shares(sampled)
    return ReportingSecAggPlus(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        max_weight=float(cfg.secagg_max_examples),
        clipping_range=cfg.secagg_clipping_range,
        # Flower's defaults (2**22 levels in a 2**32 ring) lose ~1e-4 on a small site's update (measured);
        # 2**30 levels (still int32 before masking) in a 2**40 ring keep ~1e-6, and the ring still holds
        # the sum of 1,024 sites without wrapping
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
    )


def check_range(update: list[np.ndarray], examples: int, cfg: FederationConfig) -> None:
    """Raise SecAggRangeError unless every scaled value fits ±secagg-clipping-range."""
    if examples > cfg.secagg_max_examples:
        raise SecAggRangeError(
            "secagg-weight",
            f"the site has {examples} training examples, more than secagg-max-examples="
            f"{cfg.secagg_max_examples}; the server must raise that setting",
        )
    largest = max((float(np.max(np.abs(u))) for u in update if u.size), default=0.0)
    scaled = largest * examples / cfg.secagg_max_examples
    if scaled > cfg.secagg_clipping_range:
        raise SecAggRangeError(
            "secagg-range",
            f"largest update value {largest:.4g} x {examples}/{cfg.secagg_max_examples} examples = "
            f"{scaled:.4g} is outside SecAgg+'s range ±{cfg.secagg_clipping_range:g}; the server must raise "
            "secagg-clipping-range (or lower lr); the update was not sent",
        )
