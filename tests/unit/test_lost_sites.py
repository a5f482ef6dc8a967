"""A site lost mid-round is named in the round's failures: a SuperNode the SuperLink gave up on (its error
comes from node 0), a site that never answered within round-timeout-s, a dead simulation worker; a site's own
report and an unknown node's error are left as they are."""

import time

from flwr.app import ConfigRecord, Error, Message, Metadata, RecordDict
from flwr.common.constant import ErrorCode

from mmfed.federation.outcome import SiteOutcome
from mmfed.server.lost_sites import SiteNamingGrid


def _message(src: int, dst: int, reply_to: str = "", content=None, error=None) -> Message:
    metadata = Metadata(
        run_id=1, message_id="", src_node_id=src, dst_node_id=dst, reply_to_message_id=reply_to,
        group_id="1", created_at=time.time(), ttl=3600, message_type="train",
    )  # fmt: skip
    if error is not None:
        return Message(metadata=metadata, error=error)
    return Message(metadata=metadata, content=content if content is not None else RecordDict())


class FakeGrid:
    """Push gives each message the id m<node>; pull returns the scripted replies of the asked ids."""

    pull_interval = 0.01

    def __init__(self, replies: dict[int, Message]):
        self.replies = replies  # destination node -> its reply (absent: never answers)

    def push_messages(self, messages):
        return [f"m{m.metadata.dst_node_id}" for m in messages]

    def pull_messages(self, ids):
        return [self.replies[int(mid[1:])] for mid in ids if int(mid[1:]) in self.replies]


def _result(node: int, site: str) -> Message:
    content = RecordDict({"metrics": ConfigRecord({"site": site})})
    return _message(node, 0, f"m{node}", content=content)


def _ask(grid: SiteNamingGrid, nodes: list[int]) -> dict[str, SiteOutcome]:
    out = grid.send_and_receive([_message(0, n) for n in nodes])
    failed = [m for m in out if m.has_error()]
    return {m.metadata.reply_to_message_id: SiteOutcome.from_text(m.error.reason) for m in failed}


def test_a_supernode_the_superlink_gave_up_on_is_named_unreachable():
    grid = SiteNamingGrid(FakeGrid({7: _result(7, "site_a"), 8: _result(8, "site_b")}))
    assert _ask(grid, [7, 8]) == {}
    unavailable = Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Error: Node Unavailable")
    grid.grid.replies[7] = _message(0, 0, "m7", error=unavailable)  # the SuperLink answers, as node 0
    failed = _ask(grid, [7, 8])
    assert list(failed) == ["m7"]
    assert (failed["m7"].site, failed["m7"].status, failed["m7"].code) == ("site_a", "failed", "unreachable")


def test_a_site_that_does_not_answer_in_time_is_that_rounds_timeout_failure():
    grid = SiteNamingGrid(FakeGrid({7: _result(7, "site_a"), 8: _result(8, "site_b")}), round_timeout=0.3)
    _ask(grid, [7, 8])
    del grid.grid.replies[8]  # site_b hangs; node 9 never answered at all
    t0 = time.monotonic()
    failed = _ask(grid, [7, 8, 9])
    waited = time.monotonic() - t0
    assert 0.3 <= waited < 2.0
    assert {k: (o.site, o.code) for k, o in failed.items()} == {
        "m8": ("site_b", "timeout"),
        "m9": ("node 9", "timeout"),  # never replied: named by its node id
    }


def test_no_round_timeout_waits_for_every_reply():
    replies = {7: _result(7, "site_a")}
    grid = SiteNamingGrid(FakeGrid(replies), round_timeout=0)
    assert grid.round_timeout is None
    late = _result(8, "site_b")

    def pull(ids, real=grid.grid.pull_messages):
        if time.monotonic() - t0 > 0.2:
            replies[8] = late
        return real(ids)

    grid.grid.pull_messages = pull
    t0 = time.monotonic()
    assert _ask(grid, [7, 8]) == {}


def test_a_sites_own_report_and_an_unknown_nodes_crash_are_left_as_they_are():
    own = SiteOutcome.report("site_a", "refused", "budget", "the budget is spent").to_text()
    crash = Error(code=0, reason="<class 'ray.exceptions.ActorDiedError'>")
    grid = SiteNamingGrid(FakeGrid({7: _message(7, 0, "m7", error=Error(0, own)),
                                    8: _message(8, 0, "m8", error=crash)}))  # fmt: skip
    out = {m.metadata.reply_to_message_id: m.error.reason for m in grid.send_and_receive(
        [_message(0, 7), _message(0, 8)])}  # fmt: skip
    assert out == {"m7": own, "m8": crash.reason}
    grid.grid.replies[8] = _result(8, "site_b")
    grid.send_and_receive([_message(0, 8)])
    grid.grid.replies[8] = _message(8, 0, "m8", error=crash)  # now its site is known
    (reply,) = grid.send_and_receive([_message(0, 8)])
    outcome = SiteOutcome.from_text(reply.error.reason)
    assert (outcome.site, outcome.code) == ("site_b", "worker")
