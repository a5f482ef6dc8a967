"""`mmfed settings`: every run setting, from its one declaration (mmfed.federation.settings)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mmfed.cli.common import console
from mmfed.errors import MMFedError
from mmfed.screens import fail


def settings(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="print the reference, docs/reference/settings.md")
    ] = False,
    flower: Annotated[
        bool, typer.Option("--flower", help="print pyproject.toml's [tool.flwr.app.config] table")
    ] = False,
) -> None:
    """List every run setting by section: type, default, what it does. The same names work in a scenario
    file, as `mmfed simulate --KEY`, and in Flower's run config (--markdown: docs/reference/settings.md)."""
    from mmfed.federation import settings as declaration

    if markdown and flower:
        fail(MMFedError("give --markdown or --flower, not both"))
    if markdown or flower:
        print(declaration.markdown() if markdown else declaration.flower_table(), end="")
        return
    for section in declaration.SECTIONS:
        table = Table(title=section, title_justify="left", show_edge=False)
        for column in ("setting", "type", "default", "what it does"):
            table.add_column(column, overflow="fold")
        for s in (s for s in declaration.declared() if s.section == section):
            table.add_row(s.key, s.accepts().replace("`", ""), declaration.literal(s.default), s.help)
        console.print(table, markup=False, highlight=False)
