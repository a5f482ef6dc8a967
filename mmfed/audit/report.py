"""The privacy officer's report on audited ledgers: text, Markdown, HTML or JSON, and ε-per-round plots."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmfed.audit.check import SiteAudit

TEXT_ROUNDS = 30  # rounds shown in text reports; md, html and json show all


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def site_rows(audits: list[SiteAudit]) -> list[list[str]]:
    rows = []
    for a in audits:
        if not a.budgets:
            status = "FAILED" if a.problems else "empty"
            rows.append([a.site, "-", str(len(a.entries)), "-", "-", "-", "-", "-", status])
        for b in a.budgets:
            status = "FAILED" if a.problems else ("OVER CAP" if b.over_cap else "ok")
            rows.append(
                [
                    a.site,
                    f"{b.data_versions} version{'s' if b.data_versions != 1 else ''}",
                    str(b.releases),
                    str(b.runs),
                    _fmt(b.epsilon_prv),
                    _fmt(b.epsilon_rdp),
                    _fmt(b.cap),
                    _fmt(b.remaining),
                    status,
                ]
            )
    return rows


SITE_HEADER = ["site", "data", "rounds", "runs", "ε PRV", "ε RDP", "cap", "remaining", "status"]
ROUND_HEADER = ["run", "round", "sites", "max ε PRV", "site at max"]


def round_rows(audits: list[SiteAudit]) -> list[list[str]]:
    """Per (run, round), in the order rounds happened: how many sites released, and the largest ε."""
    rounds: dict[tuple[str, int], list[tuple[float, str]]] = defaultdict(list)
    order: dict[tuple[str, int], str] = {}
    for a in audits:
        for e in a.entries:
            key = (e["run_id"], e["round"])
            rounds[key].append((e["epsilon_prv"], a.site))
            order[key] = min(order.get(key, e["time"]), e["time"])
    rows = []
    for key in sorted(rounds, key=lambda k: (order[k], k[1])):
        eps, site = max(rounds[key])
        rows.append([key[0][:8], str(key[1]), str(len(rounds[key])), f"{eps:.3f}", site])
    return rows


def as_json(audits: list[SiteAudit]) -> str:
    data: dict[str, Any] = {
        "ok": all(a.ok for a in audits),
        "sites": [
            {
                "site": a.site,
                "ledger": a.ledger,
                "key_source": a.key_source,
                "key_id": a.key_id,
                "entries": len(a.entries),
                "ok": a.ok,
                "problems": a.problems,
                "notes": a.notes,
                "budgets": [
                    {
                        "scope": b.fingerprint,  # "site": every release, whatever the data
                        "data_versions": b.data_versions,
                        "rounds": b.releases,
                        "runs": b.runs,
                        "epsilon_prv": b.epsilon_prv,
                        "epsilon_rdp": b.epsilon_rdp,
                        "delta": b.delta,
                        "max_epsilon": b.cap,
                        "remaining": b.remaining,
                        "over_cap": b.over_cap,
                        "recomputed": b.checks,
                    }
                    for b in a.budgets
                ],
            }
            for a in audits
        ],
        "rounds": [
            dict(zip(["run", "round", "sites", "max_epsilon_prv", "site"], r, strict=True))
            for r in round_rows(audits)
        ],
    }
    return json.dumps(data, indent=2)


def _problems(audits: list[SiteAudit]) -> list[str]:
    out = [p for a in audits for p in a.problems]
    for a in audits:
        out += [
            f"{a.site}: ε {b.epsilon_prv:.3f} is over its cap {b.cap:.3f}" for b in a.budgets if b.over_cap
        ]
    return out


def _notes(audits: list[SiteAudit]) -> list[str]:
    return [f"{a.site}: {n}" for a in audits for n in a.notes]


def _keys(audits: list[SiteAudit]) -> list[str]:
    return [f"{a.site}: {a.key_id} (from {a.key_source})" for a in audits]


def as_markdown(audits: list[SiteAudit]) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])

    problems = _problems(audits)
    verdict = (
        "**PASSED**: every ledger verifies and every site is within its cap."
        if not problems
        else (f"**FAILED**: {len(problems)} problem(s).")
    )
    parts = ["# Privacy audit", "", verdict, ""]
    if problems:
        parts += [f"- {p}" for p in problems] + [""]
    parts += ["## Sites", "", table(SITE_HEADER, site_rows(audits)), "", "## Rounds", ""]
    parts += [table(ROUND_HEADER, round_rows(audits)), "", "## Keys checked", ""]
    parts += [f"- {k}" for k in _keys(audits)]
    if _notes(audits):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in _notes(audits)]
    return "\n".join(parts) + "\n"


def as_html(audits: list[SiteAudit]) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    problems = _problems(audits)
    verdict = "PASSED" if not problems else f"FAILED: {len(problems)} problem(s)"
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    keys = "".join(f"<li>{html.escape(k)}</li>" for k in _keys(audits) + _notes(audits))
    return (
        "<!doctype html><meta charset='utf-8'><title>Privacy audit</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ccc}</style>"
        f"<h1>Privacy audit</h1><p><b>{verdict}</b></p><ul>{items}</ul>"
        f"<h2>Sites</h2>{table(SITE_HEADER, site_rows(audits))}"
        f"<h2>Rounds</h2>{table(ROUND_HEADER, round_rows(audits))}<h2>Keys checked</h2><ul>{keys}</ul>"
    )


def print_text(audits: list[SiteAudit], console) -> None:
    from rich.table import Table

    sites = Table(title="privacy spent per site and data (ε cumulative over every run)")
    for column in SITE_HEADER:
        sites.add_column(column)
    for row in site_rows(audits):
        style = None if row[-1] == "ok" else "bold red"
        sites.add_row(*row, style=style)
    console.print(sites)
    rounds = round_rows(audits)
    shown = rounds[-TEXT_ROUNDS:]
    per_round = Table(
        title="per round"
        + (
            f" (last {len(shown)} of {len(rounds)}; all in --format md/json)"
            if len(rounds) > len(shown)
            else ""
        )
    )
    for column in ROUND_HEADER:
        per_round.add_column(column)
    for row in shown:
        per_round.add_row(*row)
    console.print(per_round)
    for key in _keys(audits):
        console.print(f"key {key}", highlight=False)
    for note in _notes(audits):
        console.print(f"note {note}", highlight=False)
    problems = _problems(audits)
    for problem in problems:
        console.print(f"[bold red]FAILED[/] {problem}", highlight=False)
    if not problems:
        console.print("[bold green]PASSED[/]: every ledger verifies and every site is within its cap")


VERDICT_HEADER = ["site", "rounds", "ε PRV", "ε PLD", "δ", "cap", "status"]


def verdict_rows(audits: list[SiteAudit]) -> list[list[str]]:
    """One row per site budget: the ledger's cumulative ε (PRV), the independent recomputation by
    dp-accounting's PLD accountant (thorough audits; "-" otherwise), δ, the cap and the site's status."""
    rows = []
    for a in audits:
        if not a.budgets:
            rows.append(
                [a.site, str(len(a.entries)), "-", "-", "-", "-", "FAILED" if a.problems else "empty"]
            )
        for b in a.budgets:
            status = "FAILED" if a.problems else ("OVER CAP" if b.over_cap else "ok")
            pld = b.checks.get("pld_dp_accounting")
            cap = "none" if b.cap is None else f"{b.cap:g}"
            rows.append(
                [a.site, str(b.releases), _fmt(b.epsilon_prv), _fmt(pld), f"{b.delta:g}", cap, status]
            )
    return rows


def print_verdict(audits: list[SiteAudit], console, title: str, anchors: int = 0) -> bool:
    """The short form of the report (`mmfed simulate` after a private run): the per-site table, any
    problem, and the verdict line. Returns whether the audit passed."""
    from rich.table import Table

    table = Table(title=title, caption="ε PLD: recomputed from the ledger by dp-accounting's PLD accountant")
    for column in VERDICT_HEADER:
        table.add_column(column, no_wrap=column == "site")
    for row in verdict_rows(audits):
        table.add_row(*row, style=None if row[-1] == "ok" else "bold red")
    console.print(table)
    problems = _problems(audits)
    for problem in problems:
        console.print(f"[bold red]FAILED[/] {problem}", highlight=False)
    if problems:
        return False
    capped = all(b.cap is not None for a in audits for b in a.budgets)
    console.print(
        "[bold green]audit PASSED[/]: every ledger verifies (hash chain, every signature"
        + (f", the server's {anchors} anchors" if anchors else "")
        + "), every ε recomputes independently"
        + (" and every site is within its cap" if capped else "; no cap: no site has a policy of its own"),
        highlight=False,
    )
    return True


def plot_epsilon(audits: list[SiteAudit], folder: Path) -> Path:
    """Cumulative ε (PRV) after each released round, one line per site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    many = len(audits) > 12
    for a in audits:
        for b in a.budgets:
            eps = [e["epsilon_prv"] for e in a.entries]
            ax.plot(
                range(1, len(eps) + 1),
                eps,
                lw=0.8 if many else 1.5,
                marker=None if many or len(eps) > 50 else "o",
                label=None if many else a.site,
            )
            if b.cap is not None and not many:
                ax.axhline(b.cap, ls=":", lw=0.8, color=ax.lines[-1].get_color())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("rounds released by the site (all runs, in order)")
    ax.set_ylabel("cumulative ε (PRV)")
    ax.set_title(f"privacy spent per site ({len(audits)} sites)")
    if not many:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = folder / "epsilon_per_round.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
