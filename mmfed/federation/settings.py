"""Every run setting is declared once, on its `FederationConfig` field: its section, a one-line help text
and what it accepts. From that declaration come `validate()`'s checks, the `mmfed simulate` options, the
Flower defaults (`[tool.flwr.app.config]` in pyproject.toml) and the reference docs/reference/settings.md:

    mmfed settings --markdown > docs/reference/settings.md   # or: python -m mmfed.federation.settings
    mmfed settings --flower                                  # the [tool.flwr.app.config] table
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from mmfed.errors import ConfigError

# section -> what its settings are about (the reference's text under each heading)
SECTIONS = {
    "task": "What the federation learns, from which data, split into how many sites.",
    "model": "The model every site trains: how modalities are encoded and fused, and where it starts.",
    "local training": "How each site trains on its own data in a round.",
    "differential privacy": "Proposed to the sites; each site's `site.toml` has the last word.",
    "secure aggregation": "Flower SecAgg+: the server only ever sees the sum of the sites' updates.",
    "server policy": "What the server accepts from the sites, how long it waits, and when a run stops.",
    "paths/runtime": "Where results and caches go, and what the run computes on.",
}
KINDS = {"str": "string", "int": "integer", "float": "float", "bool": "boolean"}
PYTHON_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: `low`/`high` None is unbounded; an open end is excluded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""  # said after the range, e.g. "(0: not set)"

    def __contains__(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{low}, {high}{right}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {high}"
        else:
            text = "any"
        return f"{text} {self.note}" if self.note else text


def _number(x: float | None) -> str:
    """A bound as the reference writes it: whole numbers in full (4294967295, not 4.29497e+09)."""
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1e6 else f"{x:g}"


def at_least(low: float, note: str = "") -> Range:
    return Range(low=low, note=note)


def above(low: float, note: str = "") -> Range:
    return Range(low=low, low_open=True, note=note)


def between(low: float, high: float, ends: str = "[]", note: str = "") -> Range:
    """ends: "[]", "(]", "[)" or "()", as the interval is written."""
    return Range(low, high, low_open=ends[0] == "(", high_open=ends[1] == ")", note=note)


def setting(
    default: Any,
    section: str,
    help: str,
    *,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    range: Range | None = None,
    check: Callable[[Any], None] | None = None,
    resumable: bool = False,
) -> Any:
    """A FederationConfig field with its declaration. `choices` may be a function (looked up when
    checked, for lists that live in heavier modules); `check` raises ConfigError on a bad value;
    `resumable`: may differ between a run and its resumption."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    meta = {"section": section, "help": help, "choices": choices, "range": range, "check": check}
    return dataclasses.field(default=default, metadata={**meta, "resumable": resumable})


@dataclass(frozen=True)
class Setting:
    """One declared setting, as read back from its field."""

    name: str
    kind: str  # str | int | float | bool
    default: Any
    section: str
    help: str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None
    range: Range | None
    check: Callable[[Any], None] | None
    resumable: bool

    @classmethod
    def of(cls, f: dataclasses.Field) -> Setting:
        meta = f.metadata
        return cls(f.name, str(f.type), f.default, meta["section"], meta["help"], meta["choices"],
                   meta["range"], meta["check"], meta["resumable"])  # fmt: skip

    @property
    def key(self) -> str:
        """The name in TOML, Flower's run config and on the command line (`--KEY`)."""
        return self.name.replace("_", "-")

    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def validate(self, value: Any) -> None:
        wrong_type = not isinstance(value, (int, float) if self.kind == "float" else PYTHON_TYPES[self.kind])
        if wrong_type or (self.kind != "bool" and isinstance(value, bool)):
            raise ConfigError(self.key, f"{value!r} is not a valid {self.kind}")
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise ConfigError(self.key, f"{value!r} is not one of {', '.join(allowed)}")
        if self.kind == "float" and not (
            math.isfinite(value) and (self.range is None or value in self.range)
        ):
            # NaN compares False both ways and inf passes `> 0`: `target-epsilon = nan` would quietly
            # mean "no DP" and `inf` a token σ
            wants = f" {self.range}" if self.range else ""
            raise ConfigError(self.key, f"must be a finite number{wants}, got {value}")
        if self.kind == "int" and self.range is not None and value not in self.range:
            raise ConfigError(self.key, f"must be {self.range}, got {value}")
        if self.check is not None:
            self.check(value)

    def accepts(self) -> str:
        """What the reference's type column says: kind, and choices or range."""
        allowed = self.allowed()
        if allowed:
            return "one of " + ", ".join(f"`{c}`" for c in allowed)
        return f"{KINDS[self.kind]}, {self.range}" if self.range else KINDS[self.kind]


def literal(value: Any) -> str:
    """A value as TOML writes it (`true`, `"digits-av"`, `1e-5`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value)).replace("e+", "e")
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def declared() -> list[Setting]:
    """Every run setting, in declaration order."""
    from mmfed.federation.config import FederationConfig

    return [Setting.of(f) for f in dataclasses.fields(FederationConfig)]


def flower_defaults() -> dict[str, Any]:
    """What `[tool.flwr.app.config]` must hold: every setting (Flower overrides only listed keys)."""
    return {s.key: s.default for s in declared()}


def flower_table() -> str:
    """The `[tool.flwr.app.config]` table, by section, to paste into pyproject.toml."""
    lines = ["[tool.flwr.app.config]"]
    for section in SECTIONS:
        lines.append(f"# {section}")
        lines += [f"{s.key} = {literal(s.default)}" for s in declared() if s.section == section]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/reference/settings.md: one table per section."""
    out = [
        "# Settings reference",
        "",
        "<!-- generated by `mmfed settings --markdown`; tests/test_settings.py checks it is current -->",
        "",
        "Every run setting, in three places under one name: a key of a scenario file's `[federation]` "
        "table (`simulations/*.toml`; underscores work too), an option of `mmfed simulate` (`--KEY`; "
        "booleans `--KEY/--no-KEY`), and a key of Flower's run config (`flwr run . --run-config "
        '"KEY=VALUE"`, whose defaults are `[tool.flwr.app.config]` in pyproject.toml). An option given on '
        "the command line overrides the file; one not given leaves the file's value (or the default). "
        "Settings marked *resumable* may change when a run is continued with `--resume`.",
    ]
    for section, about in SECTIONS.items():
        out += ["", f"## {section[0].upper()}{section[1:]}", "", about, ""]
        out += ["| setting | type | default | what it does |", "|---|---|---|---|"]
        for s in (s for s in declared() if s.section == section):
            what = _cell(s.help) + (" *Resumable.*" if s.resumable else "")
            out.append(f"| `{s.key}` | {_cell(s.accepts())} | `{literal(s.default)}` | {what} |")
    return "\n".join(out) + "\n"


def option_help(s: Setting) -> str:
    """A setting's `--help` line: its help text, its choices and its default."""
    from rich.markup import escape

    allowed = s.allowed() if not callable(s.choices) else None  # lists from heavy modules: in the help
    listed = allowed and not all(choice in s.help for choice in allowed)
    text = s.help + (f" ({', '.join(allowed)})" if listed else "")
    if s.kind == "bool":
        text += f" [default: {'on' if s.default else 'off'}]"
    elif s.default != "":
        text += f" [default: {s.default if s.kind == 'str' else literal(s.default)}]"
    return escape(text)


def option_parameters() -> list[inspect.Parameter]:
    """A typer option per setting (`--KEY`, booleans `--KEY/--no-KEY`), grouped by section in --help.
    Each defaults to None: not given, so a scenario file's value (or the declared default) stands."""
    import typer

    return [
        inspect.Parameter(
            s.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                PYTHON_TYPES[s.kind] | None,
                typer.Option(help=option_help(s), show_default=False, rich_help_panel=s.section.capitalize()),
            ],
        )
        for s in declared()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmfed.federation.settings", description=__doc__)
    parser.add_argument("--flower", action="store_true", help="print the [tool.flwr.app.config] table")
    parser.add_argument("--markdown", action="store_true", help="print docs/reference/settings.md (default)")
    args = parser.parse_args(argv)
    print(flower_table() if args.flower else markdown(), end="")


if __name__ == "__main__":
    main()
