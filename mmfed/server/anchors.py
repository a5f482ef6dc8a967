"""Ledger anchors: the server keeps each site's last ledger head outside the site, and hands it back.

Every released round's head (index, hash, the site's signature) is appended to the run's anchors.jsonl
and to the server's anchor file shared by all its runs (run config `anchor-file`); a resumed or new run
starts from them. Each fit instruction carries `ledger-heads` ("INDEX:HASH" per site), for the site to
check its ledger still holds its head (a site rolled back from a backup is refused by itself): a node the
server has seen gets only its own site's head; a node not seen yet (the first round of a server process)
gets every site's, so a rollback is caught from the first round of a resumed run.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.common import FitIns, Parameters
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import Strategy

from mmfed.server.rounds import StrategyWrapper
from mmfed.server.rundir import RunDir


class LedgerAnchors(StrategyWrapper):
    def __init__(self, strategy: Strategy, run_dir: RunDir, anchor_file: str = "", run_id: str = ""):
        super().__init__(strategy)
        self.run_dir = run_dir
        self.anchor_file = anchor_file
        self.run_id = run_id
        self.anchors: dict[str, dict[str, Any]] = run_dir.anchors(anchor_file)
        self._node_site: dict[int, str] = {}  # which site answers on which node (from its results)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        heads = {site: f"{a['index']}:{a['hash']}" for site, a in self.anchors.items()}
        everyone = json.dumps(dict(sorted(heads.items())))
        personal = []
        for proxy, ins in instructions:  # one FitIns shared by all sites: give each its own
            site = self._node_site.get(proxy.node_id)
            own = everyone if site is None else json.dumps({site: heads[site]} if site in heads else {})
            personal.append((proxy, FitIns(ins.parameters, {**ins.config, "ledger-heads": own})))
        return personal

    def aggregate_fit(self, server_round: int, results, failures):
        aggregated = self.strategy.aggregate_fit(server_round, results, failures)
        report = self.fit_round
        for release in report.released if report is not None else []:
            if release.node_id is not None:
                self._node_site[release.node_id] = release.site
            if "ledger_index" in release.metrics:
                self._anchor(report.rnd, release.site, release.metrics)
        return aggregated

    def _anchor(self, rnd: int, site: str, metrics: dict[str, Any]) -> None:
        row = {
            "round": rnd,
            "run_id": self.run_id,
            "site": site,
            "index": int(metrics["ledger_index"]),
            "hash": str(metrics["ledger_hash"]),
            "signature": str(metrics["ledger_signature"]),
        }
        self.anchors[site] = row
        self.run_dir.log_anchors([row], also=self.anchor_file)
