"""The report a data-protection officer signs (`mmfed audit --format md|markdown|html`): per site the cap,
ε spent and remaining, runs and rounds, the mechanism in plain words, every finding with its evidence,
the empirical audit's result and power when one was run; the ε-per-round plot embedded (HTML: one
self-contained file, the plot a base64 PNG); a signature block."""

from __future__ import annotations

import base64
import html
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mmfed.audit.check import SiteAudit
from mmfed.audit.empirical import EmpiricalAudit
from mmfed.audit.report import ROUND_HEADER, SITE_HEADER, _fmt, _problems, round_rows, site_rows

SIGNATURE_FIELDS = ("Name", "Role", "Organisation", "Date", "Signature")


def mechanism(a: SiteAudit) -> str:
    """What the site's ledger says its training did, in plain words."""
    if not a.entries:
        return "No round was released: the ledger is empty."
    settings = sorted({(e["noise_multiplier"], e["sample_rate"], e.get("max_grad_norm")) for e in a.entries})
    steps = sum(e["steps"] for e in a.entries)
    kinds = "; ".join(
        f"noise σ = {s:.3g} × the clipping norm C = {c if c is not None else '?'}, each record sampled with "
        f"probability {q:.3g} per step"
        for s, q, c in settings
    )
    delta = a.entries[-1]["delta"]
    return (
        f"DP-SGD (Opacus) at the site: every record's gradient is clipped to norm C, Gaussian noise is added "
        f"to "
        f"each step's sum, records are Poisson-sampled ({kinds}). {len(a.entries)} released round(s), "
        f"{steps} DP steps in all. ε is accounted over every release of the site (PRV accountant; RDP "
        f"alongside) at δ = {delta:g}, and recomputed here from the recorded history."
    )


def findings(a: SiteAudit) -> list[tuple[str, str]]:
    """(finding, evidence) for one site: failed checks first, then what was verified."""
    out = [("FAILED", p) for p in a.problems]
    out += [
        ("OVER CAP", f"ε {b.epsilon_prv:.3f} is over its cap {b.cap:.3f}") for b in a.budgets if b.over_cap
    ]
    out += [("note", n) for n in a.notes]
    if not a.problems:
        entries = len(a.chain) or len(a.entries)
        out.append(("verified", f"hash chain and signatures of {entries} ledger entries "
                    f"({a.ledger}), key {a.key_id} from {a.key_source}"))  # fmt: skip
        for b in a.budgets:
            checks = ", ".join(f"{k} {v:.4f}" for k, v in sorted(b.checks.items())) or "PRV and RDP"
            out.append(("verified", f"ε recomputed from the recorded history: PRV {_fmt(b.epsilon_prv)}, "
                        f"RDP {_fmt(b.epsilon_rdp)} ({checks})"))  # fmt: skip
    return out


def empirical_lines(e: EmpiricalAudit) -> list[str]:
    kind = (
        "gradient canaries at the DP step (white-box)"
        if e.mode == "gradient"
        else "input canaries (black-box)"
    )
    control = f" Positive control: {e.control}." if e.control else ""
    return [
        f"Empirical audit ({kind}): {e.canaries} canaries, {e.included} included by a fair coin, "
        f"{e.rounds} round(s){f', {e.steps} DP steps' if e.steps else ''}, {e.seconds:.0f} s.{control}",
        f"ε̂ = {e.epsilon_lower:.3f} at {e.confidence:.0%} confidence "
        f"({e.correct} of {e.guesses} guesses right); "
        f"the most this design could show: {e.power:.3f}; accounted ε = {_fmt(e.epsilon_accounted)}.",
        e.verdict(),
    ]


def _plot_png(audits: list[SiteAudit]) -> bytes | None:
    from mmfed.audit.report import plot_epsilon

    if not any(a.entries for a in audits):
        return None
    with tempfile.TemporaryDirectory(prefix="mmfed-report-") as folder:
        return plot_epsilon(audits, Path(folder)).read_bytes()


def _verdict(audits: list[SiteAudit], empirical: list[EmpiricalAudit]) -> tuple[bool, str]:
    problems = _problems(audits) + [f"{e.site}: {e.verdict()}" for e in empirical if e.violation]
    if not problems:
        return True, "PASSED: every ledger verifies and every site is within its cap" + (
            "; no empirical audit found a violation." if empirical else "."
        )
    return False, f"FAILED: {len(problems)} problem(s)."


def _site_facts(a: SiteAudit) -> list[str]:
    out = []
    for b in a.budgets:
        out.append(f"cap {_fmt(b.cap) if b.cap is not None else 'none'}; spent ε {b.epsilon_prv:.3f} (PRV, "
                   f"δ = {b.delta:g}); remaining {_fmt(b.remaining)}; {b.runs} run(s), "
                   f"{b.releases} round(s)")  # fmt: skip
    return out or [f"{len(a.entries)} ledger entries"]


def as_markdown(audits: list[SiteAudit], empirical: list[EmpiricalAudit] = (), plot: bool = True) -> str:
    """The report in Markdown; the plot is embedded as a data: URI, so that the file stands alone."""

    def table(header, rows):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(r) + " |" for r in rows])  # fmt: skip

    _, verdict = _verdict(audits, list(empirical))
    parts = ["# Privacy audit", "", f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `mmfed audit`.", "",
             f"**{verdict.split(':')[0]}**:{verdict.split(':', 1)[1]}", ""]  # fmt: skip
    parts += [f"- {p}" for p in _problems(audits)] + [
        "",
        "## Summary",
        "",
        table(SITE_HEADER, site_rows(audits)),
        "",
    ]
    for a in audits:
        parts += [
            f"## Site {a.site}",
            "",
            *(f"- {f}" for f in _site_facts(a)),
            "",
            "**Mechanism.** " + mechanism(a),
            "",
        ]
        parts += ["**Findings.**", ""] + [f"- {k}: {v}" for k, v in findings(a)] + [""]
        for e in (e for e in empirical if e.site == a.site):
            parts += ["**Empirical audit.**", "", *(f"- {line}" for line in empirical_lines(e)), ""]
    others = [e for e in empirical if e.site not in {a.site for a in audits}]
    for e in others:
        parts += [f"## Empirical audit of {e.site}", "", *(f"- {line}" for line in empirical_lines(e)), ""]
    parts += ["## Rounds", "", table(ROUND_HEADER, round_rows(audits)), ""]
    if plot and (png := _plot_png(audits)):
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        parts += ["## ε per round", "", f"![cumulative ε per site and round]({uri})", ""]
    parts += ["## Sign-off", "", "I have reviewed this report and the evidence it cites.", ""]
    parts += [f"{name}: ______________________" for name in SIGNATURE_FIELDS]
    return "\n".join(parts) + "\n"


def as_html(audits: list[SiteAudit], empirical: list[EmpiricalAudit] = ()) -> str:
    """One self-contained file: the markdown's sections, the plot inline as a base64 PNG."""
    esc = html.escape

    def table(header, rows):
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def items(lines):
        return "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul>"

    ok, verdict = _verdict(audits, list(empirical))
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit</title><style>"
           "body{font-family:sans-serif;max-width:60em;margin:auto}"
           "td,th{padding:2px 8px;border-bottom:1px solid #ccc}"
           ".bad{color:#b00}.sig td{padding:14px 8px;min-width:18em}</style></head><body>",
           f"<h1>Privacy audit</h1><p>Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by "
           "<code>mmfed audit</code>.</p>",
           f"<p class='{'' if ok else 'bad'}'><b>{esc(verdict)}</b></p>", items(_problems(audits)),
           "<h2>Summary</h2>", table(SITE_HEADER, site_rows(audits))]  # fmt: skip
    for a in audits:
        out += [
            f"<h2>Site {esc(a.site)}</h2>",
            items(_site_facts(a)),
            f"<p><b>Mechanism.</b> {esc(mechanism(a))}</p>",
        ]
        out += ["<p><b>Findings.</b></p>", items(f"{k}: {v}" for k, v in findings(a))]
        for e in (e for e in empirical if e.site == a.site):
            out += ["<p><b>Empirical audit.</b></p>", items(empirical_lines(e))]
    for e in (e for e in empirical if e.site not in {a.site for a in audits}):
        out += [f"<h2>Empirical audit of {esc(e.site)}</h2>", items(empirical_lines(e))]
    out += ["<h2>Rounds</h2>", table(ROUND_HEADER, round_rows(audits))]
    if png := _plot_png(audits):
        data = base64.b64encode(png).decode()
        out += [
            "<h2>ε per round</h2>",
            f"<img alt='cumulative ε per site and round' src='data:image/png;base64,{data}'>",
        ]
    out += [
        "<h2>Sign-off</h2><p>I have reviewed this report and the evidence it cites.</p><table class='sig'>"
    ]
    out += [f"<tr><th>{f}</th><td></td></tr>" for f in SIGNATURE_FIELDS] + ["</table></body></html>"]
    return "".join(out)
