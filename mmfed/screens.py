"""No data on any screen: every `mmfed` command is guarded so that what escapes it is one line — our own
message (which names files, rows and settings, never record content), or "internal error" with the
traceback (without locals: they may hold records) in a crash log only this user can read."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.text import Text

from mmfed.errors import MMFedError

err_console = Console(stderr=True)


def fail(exc: Exception) -> None:
    # Text, not markup: a message quoting a label or path with [brackets] must print as it is
    err_console.print(Text.assemble(("error:", "bold red"), f" {exc}"), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _write_crash_log(exc: BaseException, command: str) -> Path | None:
    """The traceback (no locals: they may hold records) in a file only this user can read."""
    text = f"mmfed {command}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n" + "".join(
        traceback.format_exception(exc)
    )
    prefix = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-"
    try:
        folder = Path.home() / ".mmfed" / "logs"
        for part in (folder.parent, folder):
            part.mkdir(mode=0o700, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log", dir=folder)  # mode 0600, unique
    except (OSError, RuntimeError):  # no usable home directory: the temp directory, still 0600
        try:
            fd, name = tempfile.mkstemp(prefix=f"mmfed-{prefix}", suffix=".log")
        except OSError:
            return None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as fh:
            fh.write(text)
    except OSError:
        return None
    return Path(name)


def _internal_error(exc: BaseException, command: str) -> None:
    # the exception's text stays off the screen: it may quote a record (a decode error quotes the note)
    log = _write_crash_log(exc, command)
    where = f"details were written to {log}" if log else "no crash log could be written"
    err_console.print(
        f"mmfed: internal error ({type(exc).__name__}) in {command}; {where}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _guarded(command):
    """Whatever escapes a command becomes one line: never a traceback, never the locals of one."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # typer.Exit and usage errors: click prints and exits
        except MMFedError as exc:
            fail(exc)
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except OSError as exc:
            if exc.filename is None:
                _internal_error(exc, _command_name(command))
                raise typer.Exit(1) from None
            # a file the user named (or a run directory) that cannot be read or written
            fail(MMFedError(f"{exc.filename}: {exc.strerror or 'cannot be used'}"))
        except Exception as exc:  # noqa: BLE001 - the one place every other error ends up
            _internal_error(exc, _command_name(command))
            raise typer.Exit(1) from None

    return run


def _command_name(command) -> str:
    ctx = click.get_current_context(silent=True)
    return " ".join(ctx.command_path.split()[1:]) if ctx else command.__name__


class App(typer.Typer):
    """typer.Typer whose commands are all guarded, and whose pretty tracebacks never show locals."""

    def __init__(self, **kwargs):
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        super().__init__(**kwargs)

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(f):
            register(_guarded(f))
            return f

        return decorator

    def __call__(self, *args, **kwargs):
        # the console script's entry point: also catches what fails outside a command
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001
            _internal_error(exc, " ".join(sys.argv[1:2]) or "mmfed")
            sys.exit(1)
