"""The docs stay true: every relative link in README.md and docs/ resolves (file and heading), every
`mmfed ...` line in their bash/console blocks names a real command with options it has, and the CLI
reference lists every command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
CLI_REFERENCE = REPO / "docs" / "reference" / "cli.md"

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})\s*([^\s`]*)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
SHELL_BLOCKS = {"bash", "console", "sh", "shell"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def blocks(path: Path) -> list[tuple[str | None, int, str]]:
    """(language of the fenced block the line is in, or None for prose; line number; line)."""
    out, fence, lang = [], None, None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        found = FENCE.match(line)
        if fence is None and found:
            fence, lang = found.group(1), found.group(2).lower()
            continue
        closes = found and not found.group(2) and found.group(1)[0] == (fence or " ")[0]
        if fence is not None and closes and len(found.group(1)) >= len(fence):
            fence, lang = None, None
            continue
        out.append((lang if fence is not None else None, number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for lang, _, line in blocks(path):
        found = HEADING.match(line) if lang is None else None
        if found:
            base = slug(found.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for lang, number, line in blocks(path):
        if lang is not None:
            continue
        prose = CODE_SPAN.sub("", line)
        out += [(number, m.group(1)) for m in INLINE_LINK.finditer(prose)]
        out += [(number, m.group(1)) for m in REFERENCE_LINK.finditer(prose)]
    return out


def link_problem(page: Path, target: str, cache: dict[Path, set[str]]) -> str | None:
    if SCHEME.match(target):
        return None  # http(s), mailto: not checked here
    path_part, _, fragment = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page
    if not dest.exists():
        return f"{target}: no such file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}"
    if REPO not in (dest, *dest.parents):
        return f"{target}: points outside the repository"
    if fragment and dest.suffix == ".md":
        if dest not in cache:
            cache[dest] = anchors(dest)
        if fragment not in cache[dest]:
            return f"{target}: no heading with anchor #{fragment} in {rel(dest)}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page: Path):
    cache: dict[Path, set[str]] = {}
    problems = [
        f"{rel(page)}:{number}: {problem}"
        for number, target in links(page)
        if (problem := link_problem(page, target, cache))
    ]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_linked():
    """No orphan page: each docs/ page is reachable from a link in README.md or another page."""
    linked = set()
    for page in PAGES:
        for _, target in links(page):
            path_part = target.partition("#")[0]
            if path_part and not SCHEME.match(target):
                linked.add((page.parent / path_part).resolve())
    orphans = [rel(p) for p in PAGES if p.name != "README.md" and p.resolve() not in linked]
    assert not orphans, f"pages nothing links to: {orphans}"


# -- `mmfed` command lines --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def command_tree() -> dict[tuple[str, ...], click.Command]:
    from mmfed import cli

    tree: dict[tuple[str, ...], click.Command] = {}

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        tree[path] = command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))

    walk(typer.main.get_command(cli.app), ())
    return tree


def option_names(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts, param.secondary_opts)
    return names


def command_lines(page: Path) -> list[tuple[int, str]]:
    """Lines of bash/console blocks that run `mmfed` (console: only `$ ` prompts), continuations joined."""
    out, pending, start = [], "", 0
    for lang, number, line in blocks(page):
        if lang not in SHELL_BLOCKS:
            pending = ""
            continue
        if not pending:
            start = number
            text = line.strip()
            if text.startswith("$ "):
                text = text[2:].strip()
            elif lang == "console":
                continue  # output, not a command
        else:
            text = line.strip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        full, pending = pending + text, ""
        if re.match(r"(?:\S*/)?mmfed\s", full) or full == "mmfed":
            out.append((start, full))
    return out


def is_placeholder(token: str) -> bool:
    return "..." in token or "…" in token


def command_problem(line: str, tree: dict[tuple[str, ...], click.Command]) -> str | None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        return f"cannot parse ({exc})"
    path: tuple[str, ...] = ()
    rest = tokens[1:]
    while isinstance(tree[path], click.Group) and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        if is_placeholder(word):
            return None  # `mmfed ...`: a placeholder, not a command
        if (*path, word) not in tree and (default := getattr(tree[path], "default_command", None)):
            rest.insert(0, word)  # `mmfed audit DIR...`: the group's default command takes it
            path = (*path, default)
            break
        if (*path, word) not in tree:
            known = ", ".join(sorted(tree[path].commands))  # type: ignore[attr-defined]
            return f"'mmfed {' '.join((*path, word))}' is not a command (mmfed {' '.join(path)}: {known})"
        path = (*path, word)
    allowed = option_names(tree[path])
    for token in rest:
        if token in SHELL_OPERATORS:
            break
        if is_placeholder(token) or not token.startswith("-") or re.fullmatch(r"-[\d.e+-]+", token):
            continue  # an argument or an option's value
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name not in allowed:
            name_of = f"mmfed {' '.join(path)}".strip()
            return f"'{name_of}' has no option {name} (it has: {', '.join(sorted(allowed))})"
    return None


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_mmfed_command_lines_are_real(page: Path, command_tree):
    problems = [
        f"{rel(page)}:{number}: {line}\n    {problem}"
        for number, line in command_lines(page)
        if (problem := command_problem(line, command_tree))
    ]
    assert not problems, "command lines that do not match the CLI:\n" + "\n".join(problems)


def test_cli_reference_lists_every_command(command_tree):
    text = CLI_REFERENCE.read_text(encoding="utf-8")
    missing = [
        "mmfed " + " ".join(path)
        for path, command in command_tree.items()
        if path and not isinstance(command, click.Group) and f"mmfed {' '.join(path)}" not in text
    ]
    assert not missing, f"{rel(CLI_REFERENCE)} does not list: {missing}"


# -- the checker itself -----------------------------------------------------------------------------------


def test_slugs_match_github():
    assert (
        slug("covid-cxr: hospital X-rays and notes under DP")
        == "covid-cxr-hospital-x-rays-and-notes-under-dp"
    )
    assert slug("Auditing 100 sites x 1,000 rounds") == "auditing-100-sites-x-1000-rounds"
    assert slug("Joining a deployment (site operator)") == "joining-a-deployment-site-operator"
    assert slug("`metrics.jsonl`: one row per event") == "metricsjsonl-one-row-per-event"


def test_checker_catches_bad_commands(command_tree):
    assert command_problem("mmfed simulate --config x.toml --rounds 3", command_tree) is None
    assert command_problem("mmfed site init --dir /data/a  # comment --nonsense", command_tree) is None
    assert command_problem("mmfed audit a b --format json > out.json", command_tree) is None
    assert command_problem("mmfed audit empirical --canaries 500 --mode gradient", command_tree) is None
    assert "no option --canaries" in command_problem("mmfed audit a --canaries 5", command_tree)
    assert command_problem("mmfed ... --anything", command_tree) is None
    assert "not a command" in command_problem("mmfed simulat --rounds 3", command_tree)
    assert "no option --round" in command_problem("mmfed simulate --round 3", command_tree)
    assert "no option --nope" in command_problem("mmfed data check site_a --nope", command_tree)


def test_checker_catches_bad_links():
    readme, cache = REPO / "README.md", {}
    assert link_problem(readme, "BENCHMARKS.md#secure-noise-source", cache) is None
    assert link_problem(readme, "https://example.org/x.md#y", cache) is None
    assert "no such file" in link_problem(readme, "docs/no-such-page.md", cache)
    assert "no heading" in link_problem(readme, "BENCHMARKS.md#no-such-section", cache)
    assert "no heading" in link_problem(readme, "#no-such-heading", cache)
