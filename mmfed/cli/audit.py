"""`mmfed audit`: verify privacy ledgers and recompute ε independently of the sites (`mmfed audit PATH...`,
the group's default command), and run an empirical canary audit (`mmfed audit empirical`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from mmfed.cli.common import console
from mmfed.errors import MMFedError
from mmfed.protected import check_target, refuse_protected
from mmfed.screens import App, fail

FORMATS = ("text", "md", "markdown", "html", "json")


class AuditGroup(TyperGroup):
    """`mmfed audit` is a group whose first word, when it is not one of its commands, is a path for the
    default command: `mmfed audit DIR...` stays `mmfed audit ledgers DIR...` (a folder named like a
    command is given as ./empirical)."""

    default_command = "ledgers"

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


audit_app = App(
    cls=AuditGroup,
    help="Privacy audits: `mmfed audit PATH...` checks ledgers (the default command, `ledgers`); "
    "`mmfed audit empirical` runs a canary experiment.",
)


def audit(
    paths: Annotated[list[Path], typer.Argument(help="ledger files, site directories, or folders of them")],
    format: Annotated[
        str, typer.Option("--format", help="text, json, or the report to sign: md (markdown) or html")
    ] = "text",
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
    empirical: Annotated[
        list[Path] | None,
        typer.Option(help="an `mmfed audit empirical` result (JSON) to report (repeatable)"),
    ] = None,
) -> None:
    """Verify privacy ledgers (chain, signatures, key), recompute ε independently, report; exit 1 on any
    failed check, any site over its cap or any empirical violation."""
    from mmfed.audit import empirical as canary_audit
    from mmfed.audit import report
    from mmfed.audit.check import audit_ledger, check_anchors, find_ledgers
    from mmfed.privacy import site_keys

    check_format(format)
    try:
        results = [canary_audit.EmpiricalAudit.load(p) for p in empirical or []]
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
        reads += [Path(d) / "anchors.jsonl" for d in anchors or []] + list(empirical or [])
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
        text = render(format, audits, results)
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
    if not all(a.ok for a in audits) or any(r.violation for r in results):
        raise typer.Exit(1)


def check_format(format: str) -> None:
    if format not in FORMATS:
        fail(MMFedError(f"--format {format!r}: use text, md (markdown), html or json"))


def render(format: str, audits: list, results: list) -> str:
    """The report as text: md/markdown/html are the report to sign (mmfed.audit.signable)."""
    from mmfed.audit import report, signable

    if format in ("md", "markdown"):
        return signable.as_markdown(audits, results)
    if format == "html":
        return signable.as_html(audits, results)
    if format == "json":
        return with_empirical(report.as_json(audits), results)
    return report.as_markdown(audits)


def with_empirical(text: str, results: list) -> str:
    """The JSON report, with the empirical audits given (if any) under "empirical"."""
    import json

    if not results:
        return text
    data = json.loads(text)
    data["empirical"] = [json.loads(r.to_json()) for r in results]
    data["ok"] = data["ok"] and not any(r.violation for r in results)
    return json.dumps(data, indent=2)


def empirical(
    config: Annotated[Path | None, typer.Option(help="the run's settings (a simulation TOML file)")] = None,
    scenario: Annotated[
        str | None, typer.Option(help="instead of --config, or over it: a built-in scenario")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="override the run's rounds")] = None,
    target_epsilon: Annotated[float | None, typer.Option(help="override the run's target ε")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="override the run's σ")] = None,
    site: Annotated[int, typer.Option(help="the audited site: its number in the federation (0-based)")] = 0,
    canaries: Annotated[
        int | None,
        typer.Option(help="m: canaries, each included by a fair coin (default 1000 gradient, 500 input)"),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="gradient: white-box canaries at the site's DP step; input: mislabelled public inputs in "
            "the site's data, scored from the global models (black-box, digits tasks)"
        ),
    ] = "gradient",
    confidence: Annotated[float, typer.Option(help="of the lower bound ε̂")] = 0.95,
    output: Annotated[
        Path | None, typer.Option(help="write the result (JSON) here, for `mmfed audit --empirical`")
    ] = None,
) -> None:
    """Run a canary experiment at one site of a simulated federation with the run's settings (scratch state,
    no real budget spent); print ε̂ (a lower bound on ε), the design's maximum and the accounted ε; exit 1 on
    a violation (ε̂ above the accounted ε)."""
    from mmfed.audit.empirical import run_audit
    from mmfed.federation.config import FederationConfig

    given = {"scenario": scenario, "rounds": rounds, "target_epsilon": target_epsilon,
             "noise_multiplier": noise_multiplier}  # fmt: skip
    overrides = {k: v for k, v in given.items() if v is not None}
    if target_epsilon is not None and noise_multiplier is None:
        overrides["noise_multiplier"] = 0.0  # the override replaces the file's privacy setting
    if noise_multiplier is not None and target_epsilon is None:
        overrides["target_epsilon"] = 0.0
    try:
        if not 0 < confidence < 1:
            raise MMFedError(f"--confidence {confidence}: give a value between 0 and 1, e.g. 0.95")
        if canaries is None:
            canaries = 500 if mode == "input" else 1000
        if canaries < 2:
            raise MMFedError(f"--canaries {canaries}: give at least 2 (hundreds or thousands for power)")
        if config is not None and not config.is_file():
            raise MMFedError(f"--config {config}: no such file")
        cfg = (
            FederationConfig.from_toml(config, **overrides)
            if config
            else FederationConfig.from_mapping(overrides)
        )
        refuse_protected("--output", output, [p for p in (config,) if p])
        check_target("--output", output)
        result = run_audit(cfg, mode, site=site, canaries=canaries, beta=1 - confidence)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"site {result.site}, {result.mode} canaries: m = {result.canaries} ({result.included} included), "
        f"{result.rounds} rounds, {result.seconds:.0f}s",
        highlight=False,
    )
    console.print(
        f"ε̂ = {result.epsilon_lower:.3f} at {result.confidence:.0%} "
        f"({result.correct}/{result.guesses} right); "
        f"design maximum {result.power:.3f}; accounted ε = "
        f"{'-' if result.epsilon_accounted is None else f'{result.epsilon_accounted:.3f}'}",
        highlight=False,
    )
    console.print(("[bold red]" if result.violation else "[bold green]") + result.verdict(), highlight=False)
    if output:
        from mmfed.files import write_atomic

        try:
            write_atomic(output, result.to_json())
        except MMFedError as exc:
            fail(exc)
    if result.violation:
        raise typer.Exit(1)


audit_app.command("ledgers")(audit)
audit_app.command("empirical")(empirical)
