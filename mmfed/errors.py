"""Exceptions whose messages say where the problem is and what to do about it."""


class MMFedError(Exception):
    """Base class: every error mmfed raises on bad input is one of these."""


class ConfigError(MMFedError, ValueError):
    """A setting is invalid. The message names the setting and the accepted values."""

    def __init__(self, setting: str, problem: str):
        self.setting = setting
        self.problem = problem
        super().__init__(f"setting '{setting}': {problem}")


class ManifestError(MMFedError, ValueError):
    """A site's manifest has problems; `problems` lists every one (row, column, message)."""

    def __init__(self, manifest: str, problems: list["RowProblem"]):  # noqa: F821 (defined in data.manifest)
        self.manifest = manifest
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{manifest}: {len(problems)} problem(s) found:\n{shown}{more}\n"
            "Fix these rows, or rerun with --on-bad-row skip to leave them out (a report is written)."
        )


class DataError(MMFedError, ValueError):
    """A data file could not be read or decoded. The message names the file."""
