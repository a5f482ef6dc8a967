"""A Ray-free, in-process Flower Grid: the real ServerApp and ClientApp in one process, messages delivered
synchronously, sites served one after another. The tests, the benchmarks and the empirical privacy audit
(mmfed.audit.empirical, whose hook must reach the audited site's DP step in this process) run federations
on it; it has the simulation runtime's semantics for what they check, in milliseconds."""

from __future__ import annotations

import copy
import logging
import uuid
import warnings

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    def __init__(self, client_app, num_nodes: int, node_configs: list[dict] | None = None):
        self._client_app = client_app
        self._run = Run.create_empty(run_id=1)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self._ctx = {
            1000 + p: Context(
                run_id=1,
                node_id=1000 + p,
                state=RecordDict(),
                run_config={},
                node_config=(
                    node_configs[p] if node_configs else {"partition-id": p, "num-partitions": num_nodes}
                ),
            )
            for p in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self.closed = False

    def close(self) -> None:
        """Lets Flower's client-manager thread end (it polls get_node_ids until the run stops)."""
        self.closed = True

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(
            content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self):
        if self.closed:
            from flwr.supercore.run import RunNotRunningException

            raise RunNotRunningException()
        return list(self._ctx)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            mid = uuid.uuid4().hex
            m.metadata.__dict__["_message_id"] = mid
            m.metadata.__dict__["_run_id"] = 1
            try:  # deep copy: the real runtime serialises messages, and SecAgg+ mutates them
                reply = self._client_app(copy.deepcopy(m), self._ctx[m.metadata.dst_node_id])
            except Exception as ex:  # noqa: BLE001 - the runtime turns a ClientApp exception into an error reply
                reply = Message(Error(code=2, reason=f"{type(ex).__name__}: {ex}"), reply_to=m)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(list(messages)))


def server_context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def run_federation(
    cfg, nodes: int | None = None, node_configs: list[dict] | None = None, quiet: bool = False
) -> dict:
    """The real ServerApp and ClientApp of `cfg` on a LocalGrid; returns the run summary. `quiet`: Flower's
    log and warnings kept off the console."""
    from mmfed.server.apps import make_client_app, make_server_app

    result: dict = {}
    grid = LocalGrid(make_client_app(cfg), nodes or len(node_configs or []) or cfg.sites, node_configs)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if quiet:
        flwr_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            make_server_app(cfg, result=result)(grid, server_context())
    finally:
        grid.close()
        flwr_logger.setLevel(level)
    return result
