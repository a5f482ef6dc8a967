"""How large a file a site lets its records be: the `[data]` table of the site directory's `site.toml`.

`mmfed data check` decodes every file under these limits, and the training-time loaders enforce them again,
so a file that slipped past the check (or was replaced since) still cannot exhaust a site's memory: it is
refused, naming the file and the limit. Without a site.toml, or without a [data] table, the defaults hold.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from mmfed.errors import ConfigError

POLICY_FILE = "site.toml"  # the same file as mmfed.privacy.policy's (that layer reads its [privacy] table)
TABLES = ("privacy", "data")
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class DataLimits:
    max_image_pixels: int = 50_000_000  # width x height of one image or video frame
    max_audio_seconds: float = 600.0  # one recording
    max_video_seconds: float = 600.0  # one clip
    max_file_mb: float = 1024.0  # any file a manifest names (MiB)
    source: str = "(built-in default)"  # where they were read from, for messages
    given: tuple[str, ...] = ()  # the keys the site set (the others are the defaults)

    @property
    def max_file_bytes(self) -> int:
        return int(min(self.max_file_mb * 1024 * 1024, 2**63))  # max_file_mb = 1e308: no int is that big

    def key(self) -> tuple:
        return (self.max_image_pixels, self.max_audio_seconds, self.max_video_seconds, self.max_file_mb)

    def setting(self, key: str) -> str:
        """How a message names one of these limits: where it was set, and how to raise it."""
        where = f"set in {self.source}" if key in self.given else "the default"
        value = getattr(self, key)
        shown = f"{value:_}" if isinstance(value, int) else f"{value:g}"  # as TOML writes it: 50_000_000
        return f"data.{key} = {shown}, {where}"


DEFAULT = DataLimits()
KEYS = tuple(f.name for f in fields(DataLimits) if f.name not in ("source", "given"))
_EXAMPLES = {"max_image_pixels": "50000000", "max_audio_seconds": "600", "max_video_seconds": "600",
             "max_file_mb": "1024"}  # fmt: skip


def parse_limits(table: object, where: str) -> DataLimits:
    """A site.toml's [data] table -> DataLimits; every error names the file and the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: data", "must be a table: a line [data] followed by key = value lines")
    values: dict = {}
    for key, value in table.items():
        setting = f"{where}: data.{key}"
        if key not in KEYS:
            hint = difflib.get_close_matches(key, KEYS, n=1)
            known = f"; did you mean {hint[0]!r}?" if hint else f"; known: {list(KEYS)}"
            raise ConfigError(setting, "unknown key" + known)
        example = _EXAMPLES[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(setting, f"must be a number, e.g. {example}; got {value!r}")
        if not (0 < value < math.inf):  # also refuses NaN
            raise ConfigError(setting, f"must be a finite number > 0, e.g. {example}; got {value!r}")
        if key == "max_image_pixels":
            if not isinstance(value, int):
                raise ConfigError(setting, f"must be a whole number of pixels, e.g. {example}; got {value!r}")
            values[key] = value
        else:
            values[key] = float(value)
    return DataLimits(**values, source=where, given=tuple(values))


def read_site_toml(path: Path) -> dict:
    """A site.toml parsed, its tables checked by name; errors name the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "site policy not found; create one with `mmfed site init`") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "is a directory, not a file; put the site's policy there") from None
    except UnicodeDecodeError:  # its text would quote the file around the bad byte
        raise ConfigError(str(path), "not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except (ValueError, RecursionError):  # an integer past 4300 digits, arrays nested thousands deep
        raise ConfigError(str(path), "not valid TOML (a number too long or nesting too deep)") from None
    unknown = [t for t in data if t not in TABLES]
    if unknown:
        hints = [h for t in unknown for h in difflib.get_close_matches(t, TABLES, n=1)]
        raise ConfigError(
            str(path),
            f"unknown table(s) {unknown}" + (f"; did you mean [{hints[0]}]?" if hints else "")
            + "; a site.toml holds a [privacy] table and optionally a [data] table",
        )  # fmt: skip
    return data


_CACHE: dict[str, tuple[tuple[int, int], DataLimits]] = {}


def site_limits(site_dir: str | Path) -> DataLimits:
    """The limits of the site in `site_dir`: its site.toml's [data] table, else the defaults. Read again
    whenever the file changes (the site may edit it between runs, or during one)."""
    path = Path(site_dir) / POLICY_FILE
    try:
        st = path.stat()
    except OSError:  # no site.toml (or none that can be seen): the defaults
        return DEFAULT
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _CACHE.get(str(path))
    if cached and cached[0] == stamp:
        return cached[1]
    data = read_site_toml(path)
    limits = parse_limits(data["data"], str(path)) if "data" in data else DEFAULT
    _CACHE[str(path)] = (stamp, limits)
    return limits


_SITE_OF: dict[str, str] = {}


def limits_for(path: str | Path) -> DataLimits:
    """The limits of the site a record's file belongs to: the nearest folder above it that holds a
    manifest.csv (a file outside any site directory gets the defaults)."""
    folder = Path(path).parent
    site = _SITE_OF.get(str(folder))
    if site is None:  # found once per folder; a folder in no site is looked for again (one may appear)
        site = next((str(p) for p in (folder, *folder.parents) if (p / MANIFEST_NAME).is_file()), None)
        if site is None:
            return DEFAULT
        _SITE_OF[str(folder)] = site
    return site_limits(site)


def size_problem(size: int, limits: DataLimits) -> str | None:
    """Over max_file_mb? -> what to say, naming the limit."""
    if size > limits.max_file_bytes:
        return (
            f"is {size / 2**20:,.1f} MiB, over the limit ({limits.setting('max_file_mb')}); "
            "shrink the file, or raise the limit in the site's site.toml [data] table"
        )
    return None
