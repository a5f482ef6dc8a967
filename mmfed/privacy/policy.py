"""A site's privacy policy (`site.toml`): owned by the site, read on every round, never by the server.

The server only proposes (σ or a target ε, clipping norm, batch size, modalities); the site checks the
proposal against this file and refuses a round that would break it.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from mmfed.config import MODALITIES
from mmfed.errors import ConfigError

POLICY_FILE = "site.toml"

TEMPLATE = """\
# mmfed site policy. This file belongs to the site: the server proposes, this file decides.
# Every round the site checks the server's proposal against it and refuses (with the reason, logged
# and sent to the server) a round that would break it. Edit, then check with `mmfed site check`.

[privacy]
# The most ε (PRV accountant, at the δ below) this site will ever spend on this data, summed over
# every round of every run. A finite number: a site with a policy never releases non-private updates.
max_epsilon = {max_epsilon}
# δ of every ε this site reports; keep it well below 1 / (number of training records).
delta = {delta}
# Refuse runs that add less noise than this (σ, Opacus' noise multiplier) ...
min_noise_multiplier = {min_noise_multiplier}
# ... that clip per-sample gradients at a larger L2 norm than this ...
max_clipping_norm = {max_clipping_norm}
# ... or that sample a larger share of the training set per step (batch size / records).
max_sample_rate = {max_sample_rate}
# Modalities a run may train on at this site.
allowed_modalities = [{allowed}]
"""


@dataclass(frozen=True)
class SitePolicy:
    max_epsilon: float = 8.0
    delta: float = 1e-5
    min_noise_multiplier: float = 0.5
    max_clipping_norm: float = 10.0
    max_sample_rate: float = 0.25
    allowed_modalities: tuple[str, ...] = MODALITIES
    source: str = "(built-in default)"  # where it was read from, for messages

    def validate(self) -> None:
        where = self.source

        def bad(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{where}: privacy.{key}", problem)

        if not (0 < self.max_epsilon < math.inf):
            raise bad("max_epsilon", f"must be a finite number > 0, e.g. 8.0; got {self.max_epsilon}")
        if not 0 < self.delta < 1:
            raise bad("delta", f"must be in (0, 1), e.g. 1e-5; got {self.delta}")
        if self.min_noise_multiplier < 0 or math.isnan(self.min_noise_multiplier):
            raise bad("min_noise_multiplier", f"must be >= 0, got {self.min_noise_multiplier}")
        if not self.max_clipping_norm > 0:
            raise bad("max_clipping_norm", f"must be > 0, got {self.max_clipping_norm}")
        if not 0 < self.max_sample_rate <= 1:
            raise bad("max_sample_rate", f"must be in (0, 1], got {self.max_sample_rate}")
        unknown = [m for m in self.allowed_modalities if m not in MODALITIES]
        if unknown:
            raise bad("allowed_modalities", f"unknown {unknown}; use some of {list(MODALITIES)}")

    def template(self) -> str:
        return TEMPLATE.format(
            max_epsilon=self.max_epsilon,
            delta=self.delta,
            min_noise_multiplier=self.min_noise_multiplier,
            max_clipping_norm=self.max_clipping_norm,
            max_sample_rate=self.max_sample_rate,
            allowed=", ".join(f'"{m}"' for m in self.allowed_modalities),
        )


def load_policy(path: str | Path) -> SitePolicy:
    """Read and validate a site.toml; every error names the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "site policy not found; create one with `mmfed site init`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    if set(data) - {"privacy"} or "privacy" not in data:
        raise ConfigError(str(path), f"expected one [privacy] table, found {sorted(data) or 'none'}")
    known = {f.name for f in fields(SitePolicy)} - {"source"}
    values: dict = {}
    for key, value in data["privacy"].items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(
                f"{path}: privacy.{key}",
                "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {sorted(known)}"),
            )
        if key == "allowed_modalities":
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                raise ConfigError(
                    f"{path}: privacy.{key}", f'must be a list of names, e.g. ["image"]; got {value!r}'
                )
            values[key] = tuple(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{path}: privacy.{key}", f"must be a number, got {value!r}")
            values[key] = float(value)
    policy = SitePolicy(**values, source=str(path))
    policy.validate()
    return policy
