"""Delta-FedAvg under SecAgg+ (mmfed.federation.secagg): every result carries the same thing, the
example-weighted mean of the surviving sites' encoded updates; no individual update reaches the strategy.
Per-site metrics still do. The sites' evaluation of the model they received travels, as sums, in the
same masked vector (client.fit): there are no plain evaluate messages, which would reveal each site's
test metrics, so round r's evaluation row reports the model of round r - 1."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.common import Parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager

from mmfed.federation.params import check_update
from mmfed.server.fedavg import DeltaFedAvg, by_site, failure_rows
from mmfed.server.rounds import Evaluation, FitRound, Release

log = logging.getLogger("mmfed.federation")


class SecAggPlusFedAvg(DeltaFedAvg):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sums: np.ndarray | None = None  # (loss sum, correct, examples) over the surviving sites

    def aggregate_fit(self, server_round: int, results, failures) -> tuple[Parameters | None, dict[str, Any]]:
        self.fit_round = None
        if self.stopped:  # a halted SecAgg+ round after the stop reports here too: nothing more to say
            return None, {}
        report = FitRound(self.round_of(server_round))
        for proxy, res in by_site(results):
            site = str(res.metrics.get("site", f"node-{proxy.cid}"))
            metrics = {k: v for k, v in res.metrics.items() if k != "site"}
            base = {"round": report.rnd, "site": site, "kind": "fit", "examples": res.num_examples}
            report.rows.append({**base, "status": "accepted", "secure": True, **metrics})
            # its ledger released the round into the masked sum, whatever becomes of the aggregate
            report.released.append(Release(site, None, metrics))
        report.rows += failure_rows(report.rnd, failures)
        mean = self._unmasked_mean(report, results) if results else None
        accepted = sum(r["status"] == "accepted" for r in report.rows)
        return self._step(report, accepted, mean if accepted >= self.cfg.min_sites else None)

    def _unmasked_mean(self, report: FitRound, results) -> list[np.ndarray] | None:
        """The decoded aggregate, after the checks every update passes; on a failed check every accepted
        row becomes rejected and there is no mean."""
        encoded = parameters_to_ndarrays(results[0][1].parameters)
        total = sum(r.num_examples for _, r in results)
        if len(encoded) == self.codec.size + 1:
            # the last vector: the sites' evaluation of the model they received, as sums (client.fit)
            self._sums = np.asarray(encoded[-1], dtype=np.float64) * total
            mean = self._decode(report, encoded[:-1], total)
        else:
            mean = encoded  # fails the check below, which names the array count
        verdict = check_update(mean, self.weights, self.cfg.max_update_norm)
        if verdict.ok:
            return mean
        log.warning("round %d: the secure aggregate was rejected: %s", report.rnd, verdict.reason)
        for row in report.rows:
            if row["status"] == "accepted":
                row.update(status="rejected", reason=f"secure aggregate: {verdict.reason}")
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        self.evaluation = None
        if self.stopped:
            return []
        sums, self._sums = self._sums, None
        rnd = self.round_of(server_round)
        nan = float("nan")
        if sums is not None and sums[2] >= 0.5:
            self.evaluation = Evaluation(rnd, [], sums[0] / sums[2], sums[1] / sums[2], int(round(sums[2])),
                                         0, 0, evaluated_model_round=rnd - 1)  # fmt: skip
        else:
            self.evaluation = Evaluation(rnd, [], nan, nan, 0, 0, 0)
        return []
