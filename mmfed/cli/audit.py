"""`mmfed audit`: verify privacy ledgers and recompute ε independently of the sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mmfed.cli.common import console
from mmfed.errors import MMFedError
from mmfed.protected import check_target, refuse_protected
from mmfed.screens import fail


def audit(
    paths: Annotated[list[Path], typer.Argument(help="ledger files, site directories, or folders of them")],
    format: Annotated[str, typer.Option("--format", help="text, md, html or json")] = "text",
    plots: Annotated[Path | None, typer.Option(help="write epsilon_per_round.png here")] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="the site's public key, when auditing one ledger file alone")
    ] = None,
    thorough: Annotated[
        bool, typer.Option(help="also recompute the final ε with Opacus (RDP, PRV) and PLD (slower)")
    ] = False,
    output: Annotated[Path | None, typer.Option(help="write the report here instead of stdout")] = None,
    anchors: Annotated[
        list[Path] | None,
        typer.Option(
            help="run directory whose anchors.jsonl (the server's record of each site's ledger "
            "head) the ledgers must still hold (repeatable)"
        ),  # fmt: skip
    ] = None,
) -> None:
    """Verify privacy ledgers (chain, signatures, key), recompute ε independently, report; exit 1 on any
    failed check or any site over its cap."""
    from mmfed.audit import report
    from mmfed.audit.check import audit_ledger, check_anchors, find_ledgers
    from mmfed.privacy import site_keys

    if format not in ("text", "md", "html", "json"):
        fail(MMFedError(f"--format {format!r}: use text, md, html or json"))
    try:
        found = find_ledgers(paths)
        if public_key and not public_key.is_file():
            what = "is a folder" if public_key.is_dir() else "no such file"
            raise MMFedError(f"--public-key {public_key}: {what}; give the site's {site_keys.PUBLIC_KEY}")
        if public_key and len(found) > 1:
            raise MMFedError("--public-key applies to one ledger; audit site directories to use their keys")
        reads = [
            *paths,
            public_key,
            *(p for p, _ in found),
            *(h / site_keys.PUBLIC_KEY for _, h in found if h),
        ]
        reads += [Path(d) / "anchors.jsonl" for d in anchors or []]
        refuse_protected("--output", output, reads)
        plot = ("epsilon_per_round.png",)
        refuse_protected(
            "--plots", plots, reads, folder=True, writes=plot, instead="write the plots elsewhere"
        )
        check_target("--output", output)  # before the audit: never a report lost at the end
        check_target("--plots", plots, folder=True)
        audits = [audit_ledger(path, home, public_key, thorough) for path, home in found]
        if anchors:
            checked = check_anchors(audits, anchors)
            Console(stderr=True).print(f"anchors: {checked} ledger heads checked", highlight=False)
    except MMFedError as exc:
        fail(exc)
    if format == "text" and output is None:
        report.print_text(audits, console)
    else:
        text = {
            "text": report.as_markdown,
            "md": report.as_markdown,
            "html": report.as_html,
            "json": report.as_json,
        }[format](audits)
        if output:
            from mmfed.files import write_atomic

            try:
                write_atomic(output, text)  # its folder created; a failed write leaves what was there
            except MMFedError as exc:
                fail(exc)
        else:
            print(text)
    if plots:
        path = report.plot_epsilon(audits, plots)
        # the report may be on stdout (md/json piped to a file): status goes to stderr
        Console(stderr=True).print(f"plot: {path}", highlight=False)
    if not all(a.ok for a in audits):
        raise typer.Exit(1)
