"""FedAvg over deltas, with every update validated before use and a stop below min-sites.

Sites send `local - global` (encoded per encoder: mmfed.server.codec); the server adds the
example-weighted mean of the accepted deltas to the global model, folding them into the sum one at a time
(`streamed_mean`): it never holds every site's update as arrays. An update that fails a check (shape,
dtype, non-finite, norm bound) is rejected with a reason naming the site, and the round goes on with the
rest. Fewer usable updates than `min_sites` stops the run (remaining rounds are skipped) with the reason.
What a site refused or failed is decoded from its result (mmfed.federation.outcome), never from wording.

Writes nothing: the round's rows and releases are left in `fit_round` / `evaluation`
(mmfed.server.rounds) for the wrappers that record them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from mmfed.federation.config import FederationConfig
from mmfed.federation.outcome import SiteOutcome
from mmfed.federation.params import check_update
from mmfed.server.codec import EncoderCodec
from mmfed.server.rounds import Evaluation, FitRound, Release

log = logging.getLogger("mmfed.federation")

ServerEval = Callable[[list[np.ndarray]], dict[str, float]]


class DeltaFedAvg(FedAvg):
    """`message_config`: static entries merged into every fit and evaluate instruction's config (the
    round's own keys, server-round and run-id, win over them)."""

    def __init__(
        self,
        cfg: FederationConfig,
        initial: list[np.ndarray],
        codec: EncoderCodec | None = None,
        round_offset: int = 0,
        run_id: str = "",
        server_eval: ServerEval | None = None,
        message_config: dict[str, str] | None = None,
    ):
        static = dict(message_config or {})
        super().__init__(
            fraction_fit=cfg.fraction_fit,
            fraction_evaluate=1.0,
            min_fit_clients=cfg.min_sites,
            min_evaluate_clients=cfg.min_sites,
            min_available_clients=cfg.min_sites,
            initial_parameters=ndarrays_to_parameters(initial),
            accept_failures=True,
            evaluate_fn=_central(server_eval) if server_eval is not None else None,
            on_fit_config_fn=lambda _: dict(static),
            on_evaluate_config_fn=lambda _: dict(static),
        )
        self.cfg = cfg
        self.weights = [
            np.asarray(w, dtype=np.float32) if np.issubdtype(w.dtype, np.floating) else w for w in initial
        ]
        self.codec = codec or EncoderCodec([0] * len(initial))
        self.offset = round_offset
        self.run_id = run_id
        self.stopped: str | None = None
        self.fit_round: FitRound | None = None
        self.evaluation: Evaluation | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_sites={self.cfg.min_sites})"

    def round_of(self, server_round: int) -> int:
        return self.offset + server_round

    def _round_config(self, server_round: int) -> dict[str, Any]:
        return {"server-round": self.round_of(server_round), "run-id": self.run_id}

    # -- fit ---------------------------------------------------------------------------------------
    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        if self.stopped:
            return []
        own = self._round_config(server_round)
        instructions = super().configure_fit(server_round, parameters, client_manager)
        return [(proxy, FitIns(ins.parameters, {**ins.config, **own})) for proxy, ins in instructions]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        self.fit_round = None
        if self.stopped:  # a halted SecAgg+ round after the stop reports here too: nothing more to say
            return None, {}
        report = FitRound(self.round_of(server_round))
        # each update is decoded to be checked and dropped again: one site's arrays at a time, not all
        accepted = [res for proxy, res in by_site(results) if self._accept(report, proxy, res)]
        report.rows += failure_rows(report.rnd, failures)
        mean = None
        if len(accepted) >= self.cfg.min_sites:
            total = sum(res.num_examples for res in accepted)
            mean = self._decode(report, streamed_mean(accepted), total)
        return self._step(report, len(accepted), mean)

    def _accept(self, report: FitRound, proxy: ClientProxy, res: FitRes) -> bool:
        """One site's result: its row in `report`; whether its update passes."""
        rnd = report.rnd
        outcome = SiteOutcome.from_metrics(res.metrics, f"node-{proxy.cid}")
        site = outcome.site
        base = {"round": rnd, "site": site, "kind": "fit", "examples": res.num_examples}
        if outcome.status != "accepted":  # refused: the site's policy said no (non-participation)
            log.warning("round %d: site %s %s: %s", rnd, site, outcome.status, outcome.message)
            report.rows.append({**base, "status": outcome.status, "reason": outcome.message,
                                "code": outcome.code})  # fmt: skip
            return False
        encoded = parameters_to_ndarrays(res.parameters)
        update, problem = self.codec.split(encoded)
        verdict = check_update(update, self.weights, self.cfg.max_update_norm) if update is not None else None
        if verdict is None or not verdict.ok:
            reason = problem if verdict is None else verdict.reason
            log.warning("round %d: update from site %s rejected: %s", rnd, site, reason)
            report.rows.append({**base, "status": "rejected", "reason": reason})
            return False
        metrics = {k: v for k, v in res.metrics.items() if k != "site"}
        report.released.append(Release(site, proxy.node_id, metrics))
        report.rows.append({**base, "status": "accepted", "update_norm": verdict.norm, **metrics})
        return True

    def _decode(self, report: FitRound, mean: list[np.ndarray], total_examples: int) -> list[np.ndarray]:
        delta, report.examples_per_encoder = self.codec.decode(mean, total_examples)
        return delta

    def _step(
        self, report: FitRound, accepted: int, mean: list[np.ndarray] | None
    ) -> tuple[Parameters | None, dict[str, Any]]:
        """The round's summary; the global model moved by `mean`, or the run stopped (too few sites)."""
        rows = report.rows
        report.summary = {
            "sites_accepted": accepted,
            "sites_rejected": sum(r["status"] == "rejected" for r in rows),
            "sites_failed": sum(r["status"] == "failed" for r in rows),
            "sites_refused": sum(r["status"] == "refused" for r in rows),
            "train_seconds_sum": sum(float(r.get("train_seconds", 0.0)) for r in rows),
            # training examples behind each encoder's average this round (0: the encoder stayed as it was)
            "examples_per_encoder": report.examples_per_encoder,
        }
        self.fit_round = report
        if mean is None or accepted < self.cfg.min_sites:
            summary = report.summary
            self.stopped = report.stopped = (
                f"round {report.rnd}: only {accepted} usable site update(s), "
                f"fewer than min-sites={self.cfg.min_sites}"
                f" ({summary['sites_rejected']} rejected, {summary['sites_failed']} failed, "
                f"{summary['sites_refused']} refused by their privacy policy; "
                "see metrics.jsonl); the run stopped and keeps the checkpoints of the rounds before"
            )
            return None, {}
        self.weights = [
            (w + d).astype(np.float32) if np.issubdtype(w.dtype, np.floating) else w
            for w, d in zip(self.weights, mean, strict=True)
        ]
        # DP sites keep their train metrics in their own log (mmfed.site.sitelog): not averaged here
        done = [r for r in rows if r["status"] == "accepted" and "loss" in r]
        fit_metrics = {
            "train_loss": weighted([(r["examples"], r["loss"]) for r in done]),
            "train_accuracy": weighted([(r["examples"], r["accuracy"]) for r in done]),
        }
        report.summary.update(fit_metrics)
        return ndarrays_to_parameters(self.weights), fit_metrics

    # -- evaluation --------------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        self.evaluation = None
        if self.stopped:
            return []
        own = self._round_config(server_round)
        instructions = super().configure_evaluate(server_round, parameters, client_manager)
        return [(proxy, EvaluateIns(ins.parameters, {**ins.config, **own})) for proxy, ins in instructions]

    def evaluate(self, server_round: int, parameters: Parameters):
        """Server-side test set (when configured); also runs at round 0 on the initial model, unless the
        run is resumed (that model is a checkpoint the run already scored: its row is logged)."""
        if self.stopped or (server_round == 0 and self.offset):
            return None
        return super().evaluate(server_round, parameters)

    def aggregate_evaluate(self, server_round: int, results, failures):
        self.evaluation = None
        rnd = self.round_of(server_round)
        rows, declined = [], 0
        for proxy, res in by_site(results):
            outcome = SiteOutcome.from_metrics(res.metrics, str(proxy.cid))
            if outcome.status != "accepted":  # the site's policy or a failure
                declined += 1
                rows.append({"round": rnd, "site": outcome.site, "kind": "evaluate-declined",
                             "reason": outcome.message, "code": outcome.code})  # fmt: skip
                continue
            rows.append({"round": rnd, "site": outcome.site, "kind": "evaluate", "loss": res.loss,
                         "accuracy": float(res.metrics.get("accuracy", float("nan"))),
                         "examples": res.num_examples})  # fmt: skip
        scored = [r for r in rows if "examples" in r]
        total = sum(r["examples"] for r in scored)
        self.evaluation = Evaluation(
            rnd,
            rows,
            loss=weighted([(r["examples"], r["loss"]) for r in scored]),  # NaN when no site evaluated
            accuracy=weighted([(r["examples"], r["accuracy"]) for r in scored]),
            examples=total,
            sites_evaluated=len(scored),
            sites_eval_failed=len(failures) + declined,
        )
        return self.evaluation.loss, {"accuracy": self.evaluation.accuracy}


def streamed_mean(results: list[FitRes]) -> list[np.ndarray]:
    """`weighted_mean` of the results' encoded updates, each decoded and folded into the float64 sum in
    turn and then dropped, so the server holds one update as arrays instead of every site's (1,000 sites
    of a 0.7 MB model: 0.7 GB). The same operations in the same order: the same mean, bit for bit."""
    total = sum(res.num_examples for res in results)
    if total <= 0:
        raise ValueError("no examples behind the updates")
    out: list[np.ndarray] = []
    for res in results:
        _fold(out, res, total)
    return [a.astype(np.float32) for a in out]


def _fold(out: list[np.ndarray], res: FitRes, total: int) -> None:
    """Add one result's share to `out` (its arrays are gone when this returns)."""
    arrays = parameters_to_ndarrays(res.parameters)
    if not out:
        out.extend(np.zeros(a.shape, dtype=np.float64) for a in arrays)
    for acc, a in zip(out, arrays, strict=True):
        acc += a.astype(np.float64) * (res.num_examples / total)


def by_site(results: list[tuple[ClientProxy, Any]]) -> list[tuple[ClientProxy, Any]]:
    """Sorted by site: the float sum (and so a resumed run) does not depend on arrival order."""
    return sorted(results, key=lambda r: str(r[1].metrics.get("site", r[0].cid)))


def failure_outcome(failure: Any) -> SiteOutcome:
    """A failure Flower hands the strategy (an exception, or a (proxy, FitRes) with a non-OK status)."""
    if isinstance(failure, BaseException):
        text = str(failure)
    else:
        text = getattr(getattr(failure[1], "status", None), "message", str(failure))
    return SiteOutcome.from_text(text if text.strip() else repr(failure))


def failure_rows(rnd: int, failures: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for outcome in dict.fromkeys(failure_outcome(f) for f in failures):  # SecAgg+ may repeat one
        status = "refused" if outcome.status == "refused" else "failed"
        log.warning("round %d: a site %s: %s", rnd, status, outcome.message)
        rows.append({"round": rnd, "site": outcome.site, "kind": "fit", "status": status,
                     "reason": outcome.message, "code": outcome.code})  # fmt: skip
    return rows


def weighted(pairs: list[tuple[int, float]]) -> float:
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else float("nan")


def _central(server_eval: ServerEval):
    """FedAvg's evaluate_fn from the server's test-set evaluator: (loss, {accuracy, examples})."""

    def evaluate_fn(server_round: int, weights: list[np.ndarray], config: dict[str, Any]):
        result = server_eval(weights)
        return result["loss"], {k: v for k, v in result.items() if k != "loss"}

    return evaluate_fn
