"""A site whose process died mid-round is named in the round's rows, not reported as "unknown".

A site that fails tells the server itself (mmfed.federation.outcome). A site whose process is gone cannot:
the simulation engine answers for its dead worker with an error that names neither the site nor the
node (`Error(code=0, reason="<class 'ray.exceptions.ActorDiedError'>...")`). The server has seen the
node's earlier replies, which carry the site's name: this grid remembers the name of every node that
replied and rewrites such an error into that site's failure, code `worker`. A node that never replied
stays unknown.

It also stops waiting for replies when the process is exiting (its main thread is done: Ctrl-C of `mmfed
simulate`, after which the simulation engine answers nothing): the ServerApp's thread ends instead of
holding the process open for ever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Error, Message
from flwr.serverapp import Grid

from mmfed.errors import MMFedError
from mmfed.federation.outcome import MARKER, SiteOutcome


def _site_of(reply: Message) -> str | None:
    """The `site` a reply's metrics name (fit and evaluate results, SecAgg+'s masked vectors)."""
    if not reply.has_content():
        return None
    for record in reply.content.config_records.values():
        site = record.get("site")
        if isinstance(site, str) and site:
            return site
    return None


class SiteNamingGrid(Grid):
    """`grid`, with an error reply of a node whose site is known turned into that site's failure."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.sites: dict[int, str] = {}  # node id -> the site that answered on it

    def _name(self, replies: Iterable[Message]) -> list[Message]:
        from mmfed.site.client import FAILURES

        out = list(replies)
        for reply in out:
            node = reply.metadata.src_node_id
            if not reply.has_error():
                if (site := _site_of(reply)) is not None:
                    self.sites[node] = site
                continue
            if MARKER in (reply.error.reason or "") or node not in self.sites:
                continue  # the site's own report, or a node that never answered
            outcome = SiteOutcome.report(self.sites[node], "failed", "worker", FAILURES["worker"])
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
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._name(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Grid.send_and_receive (push, then pull until every reply is in or `timeout` has passed), giving
        up when the process exits."""
        waiting = set(self.grid.push_messages(messages))
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
        return replies
