"""What a round's aggregation reports to the strategies wrapped around it, and the wrapper base.

The server's strategy is a stack, the Flower way (strategies wrapping strategies; see
mmfed.server.strategy): a delta-FedAvg at the bottom (mmfed.server.fedavg, or its SecAgg+ form,
mmfed.server.secure) and wrappers that each add one job (mmfed.server.anchors, mmfed.server.recorder).
The bottom strategy leaves its last aggregation in `fit_round` and its last evaluation in `evaluation`
(each reset to None when the next call of its kind starts, and left None by a call with nothing to
report); a wrapper reads them through the stack after delegating.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.server.client_manager import ClientManager
from flwr.server.strategy import Strategy


@dataclass(frozen=True)
class Release:
    """A site whose training result reached the server this round: its metrics (ε, ledger head, ...)
    and, where the server learns it (plain runs), the node it answers on."""

    site: str
    node_id: int | None
    metrics: dict[str, Any]


@dataclass
class FitRound:
    rnd: int  # the run's round (a resumed run's rounds continue from the checkpoint)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the fit rows of metrics.jsonl
    released: list[Release] = field(default_factory=list)
    examples_per_encoder: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # checkpoint metadata and the global row
    stopped: str | None = None  # set when this round stopped the run


@dataclass(frozen=True)
class Evaluation:
    """The sites' evaluation of a round: per-site rows and their example-weighted means."""

    rnd: int
    rows: list[dict[str, Any]]
    loss: float
    accuracy: float
    examples: int
    sites_evaluated: int
    sites_eval_failed: int
    evaluated_model_round: int | None = None  # SecAgg+: the sums arrive with the next round's update


class StrategyWrapper(Strategy):
    """Delegates every call to `strategy`; a subclass overrides the calls its job needs."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r})"

    # what the bottom strategy reports, seen through the stack
    @property
    def fit_round(self) -> FitRound | None:
        return self.strategy.fit_round

    @property
    def evaluation(self) -> Evaluation | None:
        return self.strategy.evaluation

    @property
    def stopped(self) -> str | None:
        return self.strategy.stopped

    def round_of(self, server_round: int) -> int:
        return self.strategy.round_of(server_round)

    # the Strategy interface
    def initialize_parameters(self, client_manager: ClientManager):
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters, client_manager: ClientManager):
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results, failures):
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters, client_manager: ClientManager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters):
        return self.strategy.evaluate(server_round, parameters)
