"""The server's strategy, composed the Flower way (strategies wrapping strategies), one job per piece:

    RunRecorder            metrics rows, checkpoints (RunDir), ε summary, on_round, stop reason
      LedgerAnchors        ledger heads per site; each node's own `ledger-heads` in configure_fit
        DeltaFedAvg        configure / aggregate over checked deltas, min-sites stop (plain runs)
        | SecAggPlusFedAvg the same over SecAgg+'s unmasked sum (secure-aggregation runs)
          EncoderCodec     the codec step: per-encoder averaging (mmfed.federation.encoder_groups)

Flower's legacy workflow (LegacyContext + DefaultWorkflow, with SecAggPlusWorkflow as the fit workflow of
secure runs) drives the outermost piece; each wrapper delegates, then acts on what the bottom strategy
reports (mmfed.server.rounds). A site's outcome is decoded with mmfed.federation.outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mmfed.federation.config import FederationConfig
from mmfed.server.anchors import LedgerAnchors
from mmfed.server.codec import EncoderCodec
from mmfed.server.fedavg import DeltaFedAvg, ServerEval
from mmfed.server.recorder import RunRecorder
from mmfed.server.rundir import RunDir
from mmfed.server.secure import SecAggPlusFedAvg

__all__ = ["RunRecorder", "ServerEval", "build_strategy"]


def build_strategy(
    cfg: FederationConfig,
    initial: list[np.ndarray],
    run_dir: RunDir,
    round_offset: int = 0,
    server_eval: ServerEval | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    config_hash: str = "",
    run_id: str = "",
    groups: list[int] | None = None,
    modalities: tuple[str, ...] = (),
    message_config: dict[str, str] | None = None,
    model_card: dict[str, Any] | None = None,
) -> RunRecorder:
    """The strategy of a run. `groups`: which encoder (or the shared part) each array of `initial`
    belongs to (mmfed.federation.encoder_groups.parameter_groups); `message_config`: static entries merged
    into every fit and evaluate instruction's config. The result's `stopped` and `site_epsilon` are what
    the run summary reports."""
    codec = EncoderCodec(
        groups if groups is not None else [0] * len(initial), modalities, cfg.per_encoder_averaging
    )
    fedavg = SecAggPlusFedAvg if cfg.secure_aggregation else DeltaFedAvg
    inner = fedavg(
        cfg,
        initial,
        codec,
        round_offset=round_offset,
        run_id=run_id,
        server_eval=server_eval,
        message_config=message_config,
    )
    anchored = LedgerAnchors(inner, run_dir, cfg.anchor_file, run_id)
    return RunRecorder(anchored, run_dir, config_hash=config_hash, on_round=on_round, model_card=model_card)
