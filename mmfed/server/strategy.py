"""FedAvg over deltas, with every update validated before use, per-site metrics, and a checkpoint per round.

Sites send `local - global`; the server adds the example-weighted mean of the accepted deltas to the
global model. An update that fails a check (shape, dtype, non-finite, norm bound) is rejected with a
logged reason naming the site, and the round goes on with the rest. Fewer usable updates than
`min_sites` stops the run cleanly (remaining rounds are skipped, checkpoints kept) with the reason.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from mmfed.federation.config import FederationConfig
from mmfed.federation.encoder_groups import decode_mean, group_names, split_site_update
from mmfed.federation.params import Verdict, check_update, weighted_mean
from mmfed.server.rundir import RunDir

log = logging.getLogger("mmfed.federation")

ServerEval = Callable[[list[np.ndarray]], dict[str, float]]


def _failure_site(reason: str) -> str:
    """Our site-side messages start 'site NAME:'; under SecAgg+ that is all that names a failed site."""
    found = re.search(r"site (\S+?):", reason)
    return found.group(1) if found else "unknown"


def _failure_reason(failure: Any) -> str:
    if isinstance(failure, BaseException):
        text = str(failure)
    else:  # (proxy, FitRes) with a non-OK status
        text = getattr(getattr(failure[1], "status", None), "message", str(failure))
    return text.strip().splitlines()[-1][:300] if text.strip() else repr(failure)


class MMFedAvg(FedAvg):
    def __init__(
        self,
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
    ):
        super().__init__(
            fraction_fit=cfg.fraction_fit,
            fraction_evaluate=1.0,
            min_fit_clients=cfg.min_sites,
            min_evaluate_clients=cfg.min_sites,
            min_available_clients=cfg.min_sites,
            initial_parameters=ndarrays_to_parameters(initial),
            accept_failures=True,
        )
        self.cfg = cfg
        self.weights = [
            np.asarray(w, dtype=np.float32) if np.issubdtype(w.dtype, np.floating) else w for w in initial
        ]
        self.run_dir = run_dir
        self.offset = round_offset
        self.server_eval = server_eval
        self.on_round = on_round or (lambda row: None)
        self.config_hash = config_hash
        self.run_id = run_id
        # which encoder (or the shared part) each array belongs to: see mmfed.federation.encoder_groups
        self.groups = groups if groups is not None else [0] * len(initial)
        self.group_names = group_names(modalities)
        # each site's latest reported cumulative ε (PRV and RDP, at its δ): what it has spent so far
        self.site_epsilon: dict[str, dict[str, float]] = {}
        self.stopped: str | None = None
        self._round_start = time.perf_counter()
        self._fit_summary: dict[str, Any] = {}
        self._group_examples: dict[str, int] = {}
        self._secure_eval: np.ndarray | None = None  # SecAgg+: (loss sum, correct, examples) over sites
        # each site's last ledger head (anchors.jsonl; a resumed run continues from them)
        self.anchors: dict[str, dict[str, Any]] = run_dir.anchors(cfg.anchor_file)
        self._node_site: dict[int, str] = {}  # which site answers on which node (from its results)

    def _round(self, server_round: int) -> int:
        return self.offset + server_round

    # -- fit ---------------------------------------------------------------------------------------
    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        if self.stopped:
            return []
        self._round_start = time.perf_counter()
        instructions = super().configure_fit(server_round, parameters, client_manager)
        # each site's last anchored ledger head ("INDEX:HASH"), to check its ledger still holds it: only its
        # own once the server knows which node it answers on; every site's to a node not seen yet (the
        # first round of a server process), so a rollback is caught from the first round of a resumed run
        heads = {site: f"{a['index']}:{a['hash']}" for site, a in self.anchors.items()}
        everyone = json.dumps(dict(sorted(heads.items())))
        personal = []
        for proxy, ins in instructions:  # one FitIns shared by all sites: give each its own
            site = self._node_site.get(proxy.node_id)
            own = everyone if site is None else json.dumps({site: heads[site]} if site in heads else {})
            config = {**ins.config, "server-round": self._round(server_round), "run-id": self.run_id}
            personal.append((proxy, FitIns(ins.parameters, {**config, "ledger-heads": own})))
        return personal

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        rnd = self._round(server_round)
        rows: list[dict[str, Any]] = []
        accepted: list[tuple[list[np.ndarray], int]] = []
        if self.stopped:  # a halted SecAgg+ round after the stop reports here too: nothing more to say
            return None, {}
        if self.cfg.secure_aggregation:
            return self._aggregate_secure(rnd, results, failures)
        # sorted by site: the float sum (and so a resumed run) does not depend on arrival order
        for proxy, res in sorted(results, key=lambda r: str(r[1].metrics.get("site", r[0].cid))):
            site = str(res.metrics.get("site", f"node-{proxy.cid}"))
            base = {"round": rnd, "site": site, "kind": "fit", "examples": res.num_examples}
            if "refused" in res.metrics:  # the site's policy said no: non-participation, not a failure
                reason = str(res.metrics["refused"])
                log.warning("round %d: site %s refused: %s", rnd, site, reason)
                rows.append({**base, "status": "refused", "reason": reason, "code": res.metrics.get("code")})
                continue
            if "error" in res.metrics:
                reason = str(res.metrics["error"])
                log.warning("round %d: site %s failed: %s", rnd, site, reason)
                rows.append({**base, "status": "failed", "reason": reason, "code": res.metrics.get("code")})
                continue
            encoded = parameters_to_ndarrays(res.parameters)
            update, _, problem = split_site_update(encoded, self.groups)
            verdict = (
                check_update(update, self.weights, self.cfg.max_update_norm)
                if update is not None
                else Verdict(False, problem)
            )
            if not verdict.ok:
                log.warning("round %d: update from site %s rejected: %s", rnd, site, verdict.reason)
                rows.append({**base, "status": "rejected", "reason": verdict.reason})
                continue
            accepted.append((encoded, res.num_examples))
            metrics = {k: v for k, v in res.metrics.items() if k != "site"}
            self._note_epsilon(site, metrics)
            self._node_site[proxy.node_id] = site
            self._node_site[proxy.node_id] = site
            self._note_anchor(rnd, site, metrics)
            rows.append({**base, "status": "accepted", "update_norm": verdict.norm, **metrics})
        rows += self._failure_rows(rnd, failures)
        mean = None
        if len(accepted) >= self.cfg.min_sites:
            mean = self._decode(weighted_mean(accepted), sum(n for _, n in accepted))
        return self._finish(rnd, rows, len(accepted), mean)

    def _decode(self, mean: list[np.ndarray], total_examples: int) -> list[np.ndarray]:
        """Per-encoder means from the mean of the encoded updates; notes each encoder's example total."""
        delta, counts = decode_mean(mean, self.groups, total_examples)
        if not self.cfg.per_encoder_averaging:
            # plain FedAvg (for comparison): a site without the modality counts with a zero delta; exact
            # when every site has a modality for all or none of its samples
            shares = [c / total_examples if total_examples else 0.0 for c in counts]
            delta = [d * np.float32(shares[g]) for d, g in zip(delta, self.groups, strict=True)]
        self._group_examples = dict(zip(self.group_names, counts, strict=False))
        return delta

    def _aggregate_secure(self, rnd: int, results, failures) -> tuple[Parameters | None, dict[str, Any]]:
        """SecAgg+: every result carries the same thing, the example-weighted mean of the surviving sites'
        updates; no individual update ever reaches this point. Per-site metrics still do."""
        rows: list[dict[str, Any]] = []
        for proxy, res in sorted(results, key=lambda r: str(r[1].metrics.get("site", r[0].cid))):
            site = str(res.metrics.get("site", f"node-{proxy.cid}"))
            metrics = {k: v for k, v in res.metrics.items() if k != "site"}
            rows.append({"round": rnd, "site": site, "kind": "fit", "examples": res.num_examples,
                         "status": "accepted", "secure": True, **metrics})  # fmt: skip
            self._note_epsilon(site, metrics)
            self._note_anchor(rnd, site, metrics)
        rows += self._failure_rows(rnd, failures)
        mean = None
        if results:
            encoded = parameters_to_ndarrays(results[0][1].parameters)
            total = sum(r.num_examples for _, r in results)
            if len(encoded) == len(self.groups) + 2:
                # the last vector: the sites' evaluation of the model they received, as sums (client.fit)
                self._secure_eval = np.asarray(encoded[-1], dtype=np.float64) * total
                mean = self._decode(encoded[:-1], total)
            else:
                mean = encoded  # fails the check below, which names the array count
        if mean is not None:
            verdict = check_update(mean, self.weights, self.cfg.max_update_norm)
            if not verdict.ok:
                log.warning("round %d: the secure aggregate was rejected: %s", rnd, verdict.reason)
                for row in rows:
                    if row["status"] == "accepted":
                        row.update(status="rejected", reason=f"secure aggregate: {verdict.reason}")
                mean = None
        accepted = sum(r["status"] == "accepted" for r in rows)
        return self._finish(rnd, rows, accepted, mean if accepted >= self.cfg.min_sites else None)

    def _failure_rows(self, rnd: int, failures: list[Any]) -> list[dict[str, Any]]:
        rows = []
        for reason in dict.fromkeys(_failure_reason(f) for f in failures):  # SecAgg+ may repeat one
            status = "refused" if "Refusal" in reason else "failed"
            log.warning("round %d: a site %s: %s", rnd, status, reason)
            found = re.search(r"(?:refused|failed) \(([\w-]+)\)", reason)
            rows.append(
                {
                    "round": rnd,
                    "site": _failure_site(reason),
                    "kind": "fit",
                    "status": status,
                    "reason": reason,
                    "code": found.group(1) if found else None,
                }
            )
        return rows

    def _note_anchor(self, rnd: int, site: str, metrics: dict[str, Any]) -> None:
        if "ledger_index" in metrics:
            row = {
                "round": rnd,
                "run_id": self.run_id,
                "site": site,
                "index": int(metrics["ledger_index"]),
                "hash": str(metrics["ledger_hash"]),
                "signature": str(metrics["ledger_signature"]),
            }
            self.anchors[site] = row
            self.run_dir.log_anchors([row], also=self.cfg.anchor_file)

    def _note_epsilon(self, site: str, metrics: dict[str, Any]) -> None:
        if "epsilon_prv" in metrics:
            self.site_epsilon[site] = {
                k: float(metrics[k]) for k in ("epsilon_prv", "epsilon_rdp", "delta") if k in metrics
            }

    def _finish(
        self, rnd: int, rows: list[dict[str, Any]], accepted: int, mean: list[np.ndarray] | None
    ) -> tuple[Parameters | None, dict[str, Any]]:
        self.run_dir.log(rows)
        self._fit_summary = {
            "sites_accepted": accepted,
            "sites_rejected": sum(r["status"] == "rejected" for r in rows),
            "sites_failed": sum(r["status"] == "failed" for r in rows),
            "sites_refused": sum(r["status"] == "refused" for r in rows),
            "train_seconds_sum": sum(float(r.get("train_seconds", 0.0)) for r in rows),
            # training examples behind each encoder's average this round (0: the encoder stayed as it was)
            "examples_per_encoder": self._group_examples,
        }
        self._group_examples = {}
        if mean is None or accepted < self.cfg.min_sites:
            summary = self._fit_summary
            self.stopped = (
                f"round {rnd}: only {accepted} usable site update(s), "
                f"fewer than min-sites={self.cfg.min_sites}"
                f" ({summary['sites_rejected']} rejected, {summary['sites_failed']} failed, "
                f"{summary['sites_refused']} refused by their privacy policy; "
                "see metrics.jsonl); the run stopped and keeps the checkpoints of the rounds before"
            )
            log.error(self.stopped)
            return None, {}
        self.weights = [
            (w + d).astype(np.float32) if np.issubdtype(w.dtype, np.floating) else w
            for w, d in zip(self.weights, mean, strict=True)
        ]
        # DP sites keep their train metrics in their own log (mmfed.site.sitelog): not averaged here
        done = [r for r in rows if r["status"] == "accepted" and "loss" in r]
        fit_metrics = {
            "train_loss": _weighted([(r["examples"], r["loss"]) for r in done]),
            "train_accuracy": _weighted([(r["examples"], r["accuracy"]) for r in done]),
        }
        self._fit_summary.update(fit_metrics)
        self.run_dir.save_round(
            rnd, self.weights, {"round": rnd, "config_hash": self.config_hash, **self._fit_summary}
        )
        return ndarrays_to_parameters(self.weights), fit_metrics

    # -- evaluation --------------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        if self.stopped:
            return []
        if self.cfg.secure_aggregation:
            # no plain evaluate messages: they would reveal each site's test metrics. The sites' evaluation
            # of round r's model arrives, summed, with round r + 1's masked updates.
            self._log_global(self._round(server_round), [], 0, self._secure_eval)
            self._secure_eval = None
            return []
        instructions = super().configure_evaluate(server_round, parameters, client_manager)
        for _, ins in instructions:
            ins.config["server-round"] = self._round(server_round)
            ins.config["run-id"] = self.run_id
        return instructions

    def evaluate(self, server_round: int, parameters: Parameters):
        """Server-side test set (when configured); also runs at round 0 on the initial model."""
        if self.server_eval is None or self.stopped:
            return None
        result = self.server_eval(parameters_to_ndarrays(parameters))
        self.run_dir.log([{"round": self._round(server_round), "kind": "server", **result}])
        return result["loss"], {"accuracy": result["accuracy"]}

    def aggregate_evaluate(self, server_round: int, results, failures):
        rnd = self._round(server_round)
        rows, declined = [], 0
        for proxy, res in sorted(results, key=lambda r: str(r[1].metrics.get("site", r[0].cid))):
            site = str(res.metrics.get("site", proxy.cid))
            if "refused" in res.metrics or "error" in res.metrics:  # the site's policy or a failure
                declined += 1
                reason = str(res.metrics.get("refused", res.metrics.get("error")))
                rows.append({"round": rnd, "site": site, "kind": "evaluate-declined",
                             "reason": reason, "code": res.metrics.get("code")})  # fmt: skip
                continue
            rows.append({"round": rnd, "site": site, "kind": "evaluate", "loss": res.loss,
                         "accuracy": float(res.metrics.get("accuracy", float("nan"))),
                         "examples": res.num_examples})  # fmt: skip
        glob = self._log_global(rnd, rows, len(failures) + declined, None)
        return glob["loss"], {"accuracy": glob["accuracy"]}

    def _log_global(
        self, rnd: int, rows: list[dict[str, Any]], eval_failed: int, sums: np.ndarray | None
    ) -> dict[str, Any]:
        """The round's `global` row: the sites' evaluation (per site, or SecAgg+ `sums` of the previous
        round's model), the fit summary and ε."""
        scored = [r for r in rows if "examples" in r]
        if sums is not None and sums[2] >= 0.5:
            loss, accuracy, total = sums[0] / sums[2], sums[1] / sums[2], int(round(sums[2]))
            evaluated = {"evaluated_model_round": rnd - 1}
        else:
            total = sum(r["examples"] for r in scored)
            nan = float("nan")
            loss = _weighted([(r["examples"], r["loss"]) for r in scored]) if total else nan
            accuracy = _weighted([(r["examples"], r["accuracy"]) for r in scored]) if total else nan
            evaluated = {}
        glob = {
            "round": rnd,
            "kind": "global",
            "accuracy": accuracy,
            "loss": loss,
            "examples": total,
            "sites_evaluated": len(scored),
            "sites_eval_failed": eval_failed,
            **evaluated,
            **self._fit_summary,
            **self._epsilon_summary(),
            "seconds": time.perf_counter() - self._round_start,
        }
        self.run_dir.log([*rows, glob])
        self.on_round(glob)
        return glob

    def _epsilon_summary(self) -> dict[str, Any]:
        if not self.site_epsilon:
            return {}
        return {
            "epsilon_prv_max": max(e["epsilon_prv"] for e in self.site_epsilon.values()),
            "epsilon_rdp_max": max(e["epsilon_rdp"] for e in self.site_epsilon.values()),
            "site_epsilon_prv": {s: e["epsilon_prv"] for s, e in sorted(self.site_epsilon.items())},
        }


def _weighted(pairs: list[tuple[int, float]]) -> float:
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else float("nan")
