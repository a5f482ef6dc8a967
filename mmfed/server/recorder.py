"""The run's record: metrics.jsonl rows, a checkpoint per round, the sites' ε, the round callback and why
the run stopped. Wraps the strategy stack (mmfed.server.strategy) and writes what it reports.

Rows per round: the `fit` rows (status accepted / rejected / failed / refused, with code and reason) when
the round is aggregated, then the `evaluate` / `evaluate-declined` rows and the round's `global` row
(the sites' evaluation, the fit summary, ε); `server` rows for the server's own test set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.common import Parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import Strategy

from mmfed.server.rounds import Evaluation, StrategyWrapper
from mmfed.server.rundir import RunDir

log = logging.getLogger("mmfed.federation")


class RunRecorder(StrategyWrapper):
    def __init__(
        self,
        strategy: Strategy,
        run_dir: RunDir,
        config_hash: str = "",
        on_round: Callable[[dict[str, Any]], None] | None = None,
        model_card: dict[str, Any] | None = None,
    ):
        super().__init__(strategy)
        self.run_dir = run_dir
        self.config_hash = config_hash
        # what every checkpoint carries so that it is usable on its own (mmfed evaluate / predict / export):
        # the task (labels, modalities, tensor settings, model), its hash, the run id
        self.model_card = model_card or {}
        self.on_round = on_round or (lambda row: None)
        # each site's latest reported cumulative ε (PRV and RDP, at its δ): what it has spent so far
        self.site_epsilon: dict[str, dict[str, float]] = {}
        self._fit_summary: dict[str, Any] = {}
        self._round_start = time.perf_counter()

    # -- fit ---------------------------------------------------------------------------------------
    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        if not self.stopped:
            self._round_start = time.perf_counter()
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results, failures):
        aggregated = self.strategy.aggregate_fit(server_round, results, failures)
        report = self.fit_round
        if report is None:
            return aggregated
        for release in report.released:
            self._note_epsilon(release.site, release.metrics)
        self.run_dir.log(report.rows)
        self._fit_summary = report.summary
        if report.stopped:
            log.error(report.stopped)
        parameters = aggregated[0]
        if parameters is not None:
            self.run_dir.save_round(
                report.rnd,
                parameters_to_ndarrays(parameters),
                {
                    "round": report.rnd,
                    "config_hash": self.config_hash,
                    **self.model_card,
                    "site_epsilon": dict(self.site_epsilon),
                    **report.summary,
                },  # fmt: skip
            )
        return aggregated

    def _note_epsilon(self, site: str, metrics: dict[str, Any]) -> None:
        if "epsilon_prv" in metrics:
            self.site_epsilon[site] = {
                k: float(metrics[k]) for k in ("epsilon_prv", "epsilon_rdp", "delta") if k in metrics
            }

    # -- evaluation --------------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        instructions = self.strategy.configure_evaluate(server_round, parameters, client_manager)
        if self.evaluation is not None:  # SecAgg+: the sums came with the round's masked updates
            self._log_global(self.evaluation)
        return instructions

    def aggregate_evaluate(self, server_round: int, results, failures):
        aggregated = self.strategy.aggregate_evaluate(server_round, results, failures)
        if self.evaluation is not None:
            self._log_global(self.evaluation)
        return aggregated

    def evaluate(self, server_round: int, parameters: Parameters):
        result = self.strategy.evaluate(server_round, parameters)
        if result is not None:
            loss, metrics = result
            row = {"round": self.round_of(server_round), "kind": "server", "loss": loss, **metrics}
            self.run_dir.log([row])
        return result

    def _log_global(self, evaluation: Evaluation) -> None:
        """The round's `global` row: the sites' evaluation, the fit summary and ε."""
        model_round = evaluation.evaluated_model_round
        glob = {
            "round": evaluation.rnd,
            "kind": "global",
            "accuracy": evaluation.accuracy,
            "loss": evaluation.loss,
            "examples": evaluation.examples,
            "sites_evaluated": evaluation.sites_evaluated,
            "sites_eval_failed": evaluation.sites_eval_failed,
            **({"evaluated_model_round": model_round} if model_round is not None else {}),
            **self._fit_summary,
            **self._epsilon_summary(),
            "seconds": time.perf_counter() - self._round_start,
        }
        self.run_dir.log([*evaluation.rows, glob])
        self.on_round(glob)

    def _epsilon_summary(self) -> dict[str, Any]:
        if not self.site_epsilon:
            return {}
        return {
            "epsilon_prv_max": max(e["epsilon_prv"] for e in self.site_epsilon.values()),
            "epsilon_rdp_max": max(e["epsilon_rdp"] for e in self.site_epsilon.values()),
            "site_epsilon_prv": {s: e["epsilon_prv"] for s, e in sorted(self.site_epsilon.items())},
        }
