"""A site that is lost mid-round is named in the round's rows, not reported as "unknown", and a round
ends when the server stops waiting.

A site that fails tells the server itself (mmfed.federation.outcome). A site whose process is gone cannot,
and what comes back names neither the site nor, sometimes, the node:
- the simulation engine answers for a dead worker from its node, `Error(code=0, reason="<class
  'ray.exceptions.ActorDiedError'>...")` (code `worker`);
- a deployed SuperLink answers for a SuperNode that stopped sending heartbeats (killed, frozen, its machine
  gone) `Error(code=NODE_UNAVAILABLE)` from node 0, the SuperLink itself (code `unreachable`);
- a site that is up but does not answer (a hung ClientApp) answers nothing: after `round-timeout-s` this
  grid answers for it (code `timeout`), so that the round goes on with the sites that did reply.
The server has seen the nodes' earlier replies, which carry the site's name, and knows which node each of its
messages went to: such an error becomes that site's failure (a node that never replied: `node ID`).

It also stops waiting for replies when the process is exiting (its main thread is done: Ctrl-C of `mmfed
simulate`, after which the simulation engine answers nothing): the ServerApp's thread ends instead of
holding the process open for ever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Error, Message, Metadata
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from mmfed.errors import MMFedError
from mmfed.federation.outcome import MARKER, UNKNOWN, SiteOutcome


def _site_of(reply: Message) -> str | None:
    """The `site` a reply's metrics name (fit and evaluate results, SecAgg+'s masked vectors)."""
    if not reply.has_content():
        return None
    for record in reply.content.config_records.values():
        site = record.get("site")
        if isinstance(site, str) and site:
            return site
    return None


def _unanswered(message: Message, message_id: str, timeout: float) -> Message:
    """The error reply of a message that got no answer within `timeout` seconds, as from its node."""
    sent = message.metadata
    metadata = Metadata(
        run_id=sent.run_id, message_id="", src_node_id=sent.dst_node_id, dst_node_id=sent.src_node_id,
        reply_to_message_id=message_id, group_id=sent.group_id, created_at=time.time(), ttl=sent.ttl,
        message_type=sent.message_type,
    )  # fmt: skip
    error = Error(code=ErrorCode.UNKNOWN, reason=f"no reply in {timeout:g} s")
    return Message(metadata=metadata, error=error)


class SiteNamingGrid(Grid):
    """`grid`, with an error reply of a node whose site is known turned into that site's failure, and a
    message unanswered after `round_timeout` seconds (None or 0: no limit) answered with one."""

    def __init__(self, grid: Grid, round_timeout: float | None = None):
        self.grid = grid
        self.round_timeout = round_timeout or None
        self.sites: dict[int, str] = {}  # node id -> the site that answered on it
        self.sent_to: dict[str, int] = {}  # message id -> the node it went to

    def _name(self, replies: Iterable[Message]) -> list[Message]:
        from mmfed.site.client import FAILURES

        out = list(replies)
        for reply in out:
            node = reply.metadata.src_node_id
            sent_to = self.sent_to.pop(reply.metadata.reply_to_message_id, None)  # answered: forget it
            if not reply.has_error():
                if (site := _site_of(reply)) is not None:
                    self.sites[node] = site
                continue
            node = node if sent_to is None else sent_to
            code = {ErrorCode.NODE_UNAVAILABLE: "unreachable"}.get(reply.error.code, "worker")
            if reply.error.reason.startswith("no reply in "):
                code = "timeout"
            if MARKER in (reply.error.reason or "") or (code == "worker" and node not in self.sites):
                continue  # the site's own report, or a node that never answered
            # a node that never replied (a SecAgg+ round's first stages carry no site name) is named by its
            # id, which `flwr supernode list` maps to the name it was registered with
            site = self.sites.get(node) or (f"node {node}" if node else UNKNOWN)
            outcome = SiteOutcome.report(site, "failed", code, FAILURES[code])
            reply.error = Error(code=reply.error.code, reason=outcome.to_text())
        return out

    # the Grid interface, delegated
    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))
        self.sent_to.update((mid, m.metadata.dst_node_id) for mid, m in zip(ids, messages, strict=False))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._name(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Grid.send_and_receive (push, then pull until every reply is in or the timeout has passed: the
        caller's, else round_timeout), giving up when the process exits; each message still unanswered
        then is answered with a timeout error."""
        messages = list(messages)
        timeout = timeout or self.round_timeout
        pushed = dict(zip(self.push_messages(messages), messages, strict=False))
        waiting = set(pushed)
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and (end is None or time.monotonic() < end):
            if not threading.main_thread().is_alive():
                raise MMFedError("the simulation was interrupted; the server stopped waiting for the sites")
            found = self.pull_messages(waiting)
            replies += found
            waiting -= {m.metadata.reply_to_message_id for m in found}
            if waiting:
                time.sleep(getattr(self.grid, "pull_interval", 0.1))
        late = [_unanswered(pushed[mid], mid, timeout) for mid in sorted(waiting)]  # type: ignore[arg-type]
        return replies + self._name(late)
