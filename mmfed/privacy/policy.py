"""A site's privacy policy (`site.toml`): owned by the site, read on every round, never by the server.

The server only proposes (σ or a target ε, clipping norm, batch size, modalities); the site checks the
proposal against this file and refuses a round that would break it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path

from mmfed.config import MODALITIES
from mmfed.data.limits import parse_limits, read_site_toml
from mmfed.errors import ConfigError

POLICY_FILE = "site.toml"
BOOLEAN_KEYS = (
    "secure_rng",
    "allow_evaluation",
    "require_secure_aggregation",
    "deidentify",
    "mask_diagnosis",
)

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
# Modalities this site's records have (its schema, disclosed to the server). Under DP the site trains
# and weights exactly these encoders: whether a count is zero depends on the records, so it never decides.
{held_modalities}
# The site's public size: the number of training records it discloses. DP's sample rate, steps, noise
# normaliser and the site's FedAvg weight follow from it, never from the exact count (which DP does not
# protect). Round it (e.g. to two significant digits) and keep it when records are added or removed.
{public_examples}
# Draw DP noise and Poisson sampling from a ChaCha20 stream (cryptographically secure, with the
# floating-point-attack guard) instead of torch's generator. Both are seeded afresh from the OS every round.
secure_rng = {secure_rng}
# Models this site agreed to train: hashes printed by `mmfed site approve --config RUN.toml` (the model
# and the task's labels). Empty: any model the run proposes within the limits above.
approved_models = [{approved_models}]
# Send updates only under secure aggregation (SecAgg+): refuse every plain train message.
require_secure_aggregation = {require_secure_aggregation}
# Scrub names, dates, ages, contacts, ids and hospitals from clinical text before the model reads it, and
# (mask_diagnosis) mask diagnosis terms. A run can switch either on, never off, where the site requires it.
deidentify = {deidentify}
mask_diagnosis = {mask_diagnosis}
# Evaluate the run's global model on this site's test split and report loss / accuracy (not covered by
# DP: they describe the test records). Under secure aggregation only their sum over sites is revealed.
allow_evaluation = {allow_evaluation}

[data]
# Limits on every file the manifest names: `mmfed data check` decodes each file within them, and training
# refuses (naming the file) one that is over them, so no record can exhaust this machine's memory. The
# defaults are shown; uncomment a line to change one (e.g. for whole-slide images or long recordings).
# max_image_pixels = 50_000_000   # width x height of an image or of a video frame
# max_audio_seconds = 600         # one recording
# max_video_seconds = 600         # one clip
# max_file_mb = 1024              # any one file, in MiB
"""


@dataclass(frozen=True)
class SitePolicy:
    max_epsilon: float = 8.0
    delta: float = 1e-5
    min_noise_multiplier: float = 0.5
    max_clipping_norm: float = 10.0
    max_sample_rate: float = 0.25
    allowed_modalities: tuple[str, ...] = MODALITIES
    approved_models: tuple[str, ...] = ()  # empty: any model
    held_modalities: tuple[str, ...] = ()  # empty: not declared (required under DP when deployed)
    public_examples: int = 0  # 0: not declared (a deployed site must declare it to train under DP)
    secure_rng: bool = True
    allow_evaluation: bool = True
    require_secure_aggregation: bool = False
    deidentify: bool = True
    mask_diagnosis: bool = False
    source: str = "(built-in default)"  # where it was read from, for messages

    def validate(self) -> None:
        where = self.source

        def bad(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{where}: privacy.{key}", problem)

        if not (0 < self.max_epsilon < math.inf):  # also refuses NaN
            raise bad("max_epsilon", f"must be a finite number > 0, e.g. 8.0; got {self.max_epsilon}")
        if not 0 < self.delta < 1:
            raise bad("delta", f"must be in (0, 1), e.g. 1e-5; got {self.delta}")
        if not (0 <= self.min_noise_multiplier < math.inf):
            raise bad(
                "min_noise_multiplier", f"must be a finite number >= 0, got {self.min_noise_multiplier}"
            )
        if not self.max_clipping_norm > 0:  # inf: no cap (the run's own norm must still be finite)
            raise bad("max_clipping_norm", f"must be > 0, got {self.max_clipping_norm}")
        if not 0 < self.max_sample_rate <= 1:
            raise bad("max_sample_rate", f"must be in (0, 1], got {self.max_sample_rate}")
        if self.public_examples < 0:
            raise bad(
                "public_examples",
                f"must be a whole number >= 1 (0: not declared), got {self.public_examples}",
            )
        for key in ("allowed_modalities", "held_modalities"):
            unknown = [m for m in getattr(self, key) if m not in MODALITIES]
            if unknown:
                raise bad(key, f"unknown {unknown}; use some of {list(MODALITIES)}")

    def template(self) -> str:
        return TEMPLATE.format(
            max_epsilon=self.max_epsilon,
            delta=self.delta,
            min_noise_multiplier=self.min_noise_multiplier,
            max_clipping_norm=self.max_clipping_norm,
            max_sample_rate=self.max_sample_rate,
            allowed=", ".join(f'"{m}"' for m in self.allowed_modalities),
            approved_models=", ".join(f'"{m}"' for m in self.approved_models),
            held_modalities=(
                "held_modalities = [" + ", ".join(f'"{m}"' for m in self.held_modalities) + "]"
                if self.held_modalities
                else '# held_modalities = ["image"]   (not declared: required under DP when deployed)'
            ),
            public_examples=(
                f"public_examples = {self.public_examples}"
                if self.public_examples
                else "# public_examples = 450   (not declared: required to train under DP when deployed)"
            ),
            secure_rng=str(self.secure_rng).lower(),
            allow_evaluation=str(self.allow_evaluation).lower(),
            require_secure_aggregation=str(self.require_secure_aggregation).lower(),
            deidentify=str(self.deidentify).lower(),
            mask_diagnosis=str(self.mask_diagnosis).lower(),
        )


def load_policy(path: str | Path) -> SitePolicy:
    """Read and validate a site.toml; every error names the file and the key."""
    path = Path(path)
    data = read_site_toml(path)  # its tables checked by name, every read error naming the file
    if set(data) - {"privacy", "data"} or not isinstance(data.get("privacy"), dict):
        raise ConfigError(
            str(path), f"expected one [privacy] table (and optionally [data]), found {sorted(data) or 'none'}"
        )
    if "data" in data:  # the site's limits on its files (mmfed.data.limits): validated here too
        parse_limits(data["data"], str(path))
    known = {f.name for f in fields(SitePolicy)} - {"source"}
    values: dict = {}
    for key, value in data["privacy"].items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(
                f"{path}: privacy.{key}",
                "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {sorted(known)}"),
            )
        if key in ("allowed_modalities", "held_modalities", "approved_models"):
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                raise ConfigError(
                    f"{path}: privacy.{key}", f'must be a list of names, e.g. ["image"]; got {value!r}'
                )
            values[key] = tuple(value)
        elif key in BOOLEAN_KEYS:
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: privacy.{key}", f"must be true or false, got {value!r}")
            values[key] = value
        elif key == "public_examples":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{path}: privacy.{key}", f"must be a whole number >= 1, e.g. 450; got {value!r}"
                )
            values[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{path}: privacy.{key}", f"must be a number, got {value!r}")
            values[key] = float(value)
    policy = SitePolicy(**values, source=str(path))
    policy.validate()
    return policy
