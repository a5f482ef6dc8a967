"""A site's outcome survives both carriers (metrics, SecAgg+'s exception text) whatever its wording."""

import pytest
from flwr.app import Error

from mmfed.federation.outcome import MARKER, SiteOutcome
from mmfed.privacy.budget import REFUSALS
from mmfed.server.fedavg import failure_rows
from mmfed.site.client import FAILURES, SiteDropout

OUTCOMES = [
    SiteOutcome.report("site_00001", "refused", "budget", REFUSALS["budget"]),
    SiteOutcome.report("site_00002", "failed", "internal", FAILURES["internal"]),
    SiteOutcome.report("site_00003", "failed", "setup", FAILURES["setup"]),  # "site's", "run's"
    # wording that must never decide the status
    SiteOutcome("h\u00f4pital 'nord' \"A\"", "failed", "data", "Refusal: site x: refused (budget): \\ no"),
    SiteOutcome("site_00004", "refused", "ledger", "site y: failed (internal): a Refusal said failed (x)"),
    SiteOutcome("site_00005", "accepted"),
]


def flower_wrappings(text: str) -> list[str]:
    """The forms a ClientApp exception's text reaches the strategy in: the in-process grid's, the
    simulation engine's and a SuperNode's error reasons, each inside Exception(Error(...)) (a repr)."""
    raised = SiteDropout(text)
    reasons = [
        f"{type(raised).__name__}: {raised}",
        str(type(raised)) + ":<'" + f"\nException ClientAppException occurred. Message: {raised}" + "'>",
        str(type(raised)) + ":<'" + str(raised) + "'>",
    ]
    return [text, *(str(Exception(Error(code=2, reason=r))) for r in reasons)]


@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: f"{o.status}-{o.code}")
def test_metrics_round_trip(outcome):
    metrics = outcome.to_metrics()
    assert all(isinstance(v, str) for v in metrics.values())  # Flower metrics hold no None
    assert SiteOutcome.from_metrics(metrics, "node-7") == outcome


@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: f"{o.status}-{o.code}")
def test_text_round_trip_through_every_flower_wrapping(outcome):
    for text in flower_wrappings(outcome.to_text()):
        assert SiteOutcome.from_text(text) == outcome, text


def test_the_text_reads_as_the_public_sentence_first():
    outcome = OUTCOMES[0]
    assert outcome.message == f"site site_00001: refused (budget): {REFUSALS['budget']}"
    assert outcome.to_text().startswith(outcome.message + f" [{MARKER}")


def test_an_accepted_result_is_its_own_metrics():
    assert SiteOutcome.from_metrics({"loss": 0.5}, "node-3") == SiteOutcome("node-3", "accepted")
    assert SiteOutcome.from_metrics({"site": "a", "accuracy": 0.9}, "x").status == "accepted"


@pytest.mark.parametrize(
    "text",
    [
        "Refusal: site site_00001: refused (budget): no",  # reads like a refusal, has no marker
        "Traceback (most recent call last):\n  ...\nRuntimeError: failed (internal)",
        f"site a: failed [{MARKER}not-base64!]",
        f"[{MARKER}eyJ2IjoyfQ]",  # {"v":2}: a version this server does not know
        f"[{MARKER}eyJ2IjoxLCJzdGF0dXMiOiJtYXliZSJ9]",  # {"v":1,"status":"maybe"}
        "",
    ],
)
def test_a_text_without_a_valid_marker_is_an_unknown_sites_failure(text):
    outcome = SiteOutcome.from_text(text)
    assert (outcome.site, outcome.status, outcome.code) == ("unknown", "failed", None)
    assert outcome.message == (text.strip().splitlines()[-1].strip() if text.strip() else "")


def test_an_unknown_outcome_in_metrics_is_a_failure():
    outcome = SiteOutcome.from_metrics({"site": "a", "outcome": "maybe", "code": "x"}, "n")
    assert (outcome.site, outcome.status, outcome.code) == ("a", "failed", "x")


def test_the_server_rows_come_from_the_marker_not_the_wording():
    refused, failed = OUTCOMES[4], OUTCOMES[3]
    failures = [Exception(Error(code=2, reason=f"SiteDropout: {o.to_text()}")) for o in (refused, failed)]
    failures.append(failures[0])  # SecAgg+ may report one dropout in two stages
    failures.append(Exception("connection reset"))
    rows = failure_rows(4, failures)
    assert [(r["site"], r["status"], r["code"], r["reason"]) for r in rows] == [
        (refused.site, "refused", "ledger", refused.message),
        (failed.site, "failed", "data", failed.message),
        ("unknown", "failed", None, "connection reset"),
    ]
    assert all(r["round"] == 4 and r["kind"] == "fit" for r in rows)
