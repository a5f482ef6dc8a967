"""The federation's run configuration: one typed object built from Flower's flat run config (or a TOML
file, or the `mmfed simulate` options), validated with messages that name the setting.

Each field is a setting's one declaration (mmfed.federation.settings): section, help, what it accepts.
Adding a setting is adding a field here; the `mmfed simulate` option, the check, the Flower default and
docs/reference/settings.md follow from it (regenerate the latter two: `mmfed settings --flower`,
`mmfed settings --markdown`; tests/test_settings.py says when they are stale).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfed.config import (
    FUSIONS,
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    config_hash,
    parse_modalities,
    to_jsonable,
)
from mmfed.errors import ConfigError
from mmfed.federation.settings import above, at_least, between, declared, setting

DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.05}


def _scenarios() -> tuple[str, ...]:
    from mmfed.data.scenarios import SCENARIOS

    return SCENARIOS


def _check_partition(partition: str) -> None:
    """Refused here, not when the sites are split (in Ray workers, after the run has started)."""
    kind, colon, arg = partition.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = math.nan
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(
                "partition", f"{partition!r}: alpha must be a finite number > 0, e.g. dirichlet:0.1"
            )
    elif kind == "natural" and colon and not arg:
        raise ConfigError("partition", f"{partition!r}: write natural or natural:COLUMN")
    elif kind not in ("natural", "iid") or (kind == "iid" and colon):
        raise ConfigError("partition", f"{partition!r}: use natural, iid or dirichlet:ALPHA")


def _check_modalities(modalities: str) -> None:
    if modalities:
        parse_modalities(modalities)


def _check_initial_model(value: str) -> None:
    from mmfed.train.pretrained import check_name  # torch-free

    check_name(value)


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", device):  # \d would take other scripts' digits
        raise ConfigError("device", f"{device!r}: use auto, cpu, cuda or cuda:N")


TASK, MODEL, TRAINING = "task", "model", "local training"
DP, SECAGG, SERVER, PATHS = "differential privacy", "secure aggregation", "server policy", "paths/runtime"


@dataclass(frozen=True)
class FederationConfig:
    # -- task --------------------------------------------------------------------------------------
    scenario: str = setting(
        "digits-av", TASK, "built-in scenario: digits-av (embedded data), digits-public (embedded public "
        "data, what pretrained:digits-public trains on), fsdd-mnist, fsdd-mnist-public (the MNIST images no "
        "fsdd-mnist site holds, what pretrained:fsdd-mnist-public trains on), covid-cxr, grid-av (these "
        "read data-dir), synthetic (generated)", choices=_scenarios,
    )  # fmt: skip
    task: str = setting(
        "", TASK, "task.toml declaring labels, modalities, tensor settings and model; empty: the scenario's "
        "built-in task",
    )  # fmt: skip
    site_dirs: str = setting(
        "", TASK, "comma-separated site directories to simulate, one site each (with --task)"
    )
    data_dir: str = setting(
        "",
        TASK,
        "folder with the real data a scenario reads (fsdd-mnist and fsdd-mnist-public: fsdd/ and mnist/; "
        "covid-cxr; grid-av)",
    )
    sites: int = setting(
        2, TASK, "number of sites (flwr run: as many as --federation-config num-supernodes; scenarios with "
        "natural sites: their data decides)", range=at_least(1),
    )  # fmt: skip
    samples_per_site: int = setting(
        50, TASK, "examples per site of the synthetic scenario", range=at_least(1)
    )
    partition: str = setting(
        "natural", TASK, "how data becomes sites: natural (the scenario's own sites; natural:COLUMN), iid, "
        "or dirichlet:ALPHA (label skew, smaller is more skewed)", check=_check_partition,
    )  # fmt: skip
    modalities: str = setting(
        "",
        TASK,
        "comma list, e.g. image,audio; empty: every modality the scenario has",
        check=_check_modalities,
    )
    missing_modality_rate: float = setting(
        0.0, TASK, "this share of the sites lacks one modality entirely (seeded)", range=between(0, 1)
    )
    deidentify: bool = setting(
        True, TASK, "scrub names, dates, ages, contacts, ids, hospitals from text before tokenising"
    )
    mask_diagnosis: bool = setting(
        False, TASK, "label-leak guard: mask diagnosis terms in text (covid-cxr notes name the diagnosis)"
    )
    seed: int = setting(
        0, TASK, "seeds the scenario, the partition and every site's training", range=between(0, 2**32 - 1)
    )
    # -- model -------------------------------------------------------------------------------------
    fusion: str = setting("attention", MODEL, "how the modalities' encodings are combined", choices=FUSIONS)
    image_encoder: str = setting(
        "cnn", MODEL, "image encoder: cnn (small, from scratch) or resnet18", choices=IMAGE_ENCODERS
    )
    text_encoder: str = setting(
        "bert-small", MODEL, "text encoder: bert-small (from scratch) or minilm (the pretrained "
        "all-MiniLM-L6-v2, offline)", choices=TEXT_ENCODERS,
    )  # fmt: skip
    freeze_text: bool = setting(False, MODEL, "minilm: freeze all of it (else its last layer trains)")
    freeze_encoders: bool = setting(
        False, MODEL, "train only fusion + classifier (DP fine-tuning of a pretrained initial-model)"
    )
    initial_model: str = setting(
        "", MODEL, "safetensors weights to start from (e.g. `mmfed train` on public data), or "
        "pretrained:digits-public or pretrained:fsdd-mnist-public (reads data-dir): trained on that built-in "
        "public scenario once, then cached; empty: random",
        check=_check_initial_model,
    )  # fmt: skip
    # -- local training ----------------------------------------------------------------------------
    local_epochs: int = setting(1, TRAINING, "epochs each site trains per round", range=at_least(1))
    batch_size: int = setting(
        32, TRAINING, "training batch size (under DP: the expected batch)", range=at_least(1)
    )
    lr: float = setting(
        0.0, TRAINING, "learning rate; 0: the optimizer's default (AdamW 2e-3, SGD 0.05)",
        range=at_least(0, "(0: the optimizer's default)"),
    )  # fmt: skip
    optimizer: str = setting("adamw", TRAINING, "adamw, or sgd (momentum 0.9)", choices=("adamw", "sgd"))
    lr_schedule: str = setting(
        "cosine", TRAINING, "cosine: the sites' learning rate decays over the rounds to 10%, so the global "
        "model settles; or constant", choices=("cosine", "constant"),
    )  # fmt: skip
    augment: bool = setting(True, TRAINING, "audio/image augmentation while training")
    modality_dropout: float = setting(
        0.3, TRAINING, "hide one of a training sample's modalities with this probability",
        range=between(0, 1, "[)"),
    )  # fmt: skip
    # -- differential privacy, proposed to the sites (each site's site.toml has the last word) --------
    target_epsilon: float = setting(
        0.0, DP, "ε the whole planned run may spend per site (PRV accountant); 0: not set",
        range=at_least(0, "(0: not set)"),
    )  # fmt: skip
    noise_multiplier: float = setting(
        0.0, DP, "σ, instead of target-epsilon; both 0: no DP", range=at_least(0, "(0: not set)")
    )
    max_grad_norm: float = setting(1.0, DP, "per-sample clipping norm C", range=above(0))
    delta: float = setting(
        1e-5, DP, "δ for sites without a policy of their own (a site.toml's δ wins)",
        range=between(0, 1, "()", "(e.g. 1e-5)"),
    )  # fmt: skip
    site_max_epsilon: float = setting(
        0.0, DP, "simulation: the ε cap (PRV, over every release of the site, whatever the run) of simulated "
        "sites without a site.toml of their own; 0: no cap (a deployed site's cap is its site.toml's)",
        range=at_least(0, "(0: no cap)"),
    )  # fmt: skip
    grad_sample_mode: str = setting(
        "ew", DP, "Opacus per-sample gradients: ew (fastest here), hooks or functorch",
        choices=("ew", "hooks", "functorch"),
    )  # fmt: skip
    state_dir: str = setting(
        "", DP, "simulation: each site's privacy state (site.toml, keys, budget, ledger) lives in "
        "STATE_DIR/<site>; empty: RUN_DIR/sites",
    )  # fmt: skip
    anchor_file: str = setting(
        "", DP, "server: a file every run appends each site's ledger head to and hands sites the last one "
        "from, so a site rolled back between runs is caught too; empty: this run directory's anchors.jsonl",
        resumable=True,
    )  # fmt: skip
    # -- secure aggregation (Flower SecAgg+) ---------------------------------------------------------
    secure_aggregation: bool = setting(
        False, SECAGG, "SecAgg+: the server only ever sees the sum of the updates"
    )
    secagg_max_examples: int = setting(
        10000, SECAGG, "largest training set a site may weight its update by (max_weight)", range=at_least(1)
    )
    secagg_clipping_range: float = setting(
        1.0, SECAGG, "|update value| x examples / secagg-max-examples must fit in this", range=above(0)
    )
    # -- server policy -----------------------------------------------------------------------------
    rounds: int = setting(3, SERVER, "server rounds", range=at_least(1), resumable=True)
    min_sites: int = setting(
        2, SERVER, "fewer usable updates than this in a round stops the run", range=at_least(1)
    )
    fraction_fit: float = setting(
        1.0, SERVER, "share of the connected sites asked to train each round", range=between(0, 1, "(]")
    )
    max_update_norm: float = setting(
        100.0, SERVER, "an update (local - global) with a larger L2 norm is rejected", range=above(0)
    )
    per_encoder_averaging: bool = setting(
        True, SERVER, "average each encoder over the sites that trained it (else over all sites)"
    )
    server_test_dir: str = setting(
        "", SERVER, "a site directory whose test split the server evaluates every round"
    )
    site_wait_s: float = setting(
        120.0, SERVER, "seconds the server waits for min-sites sites to connect", range=at_least(0),
        resumable=True,
    )  # fmt: skip
    round_timeout_s: float = setting(
        3600.0, SERVER, "seconds the server waits for a round's replies; a site that has not answered by "
        "then is that round's failure (code timeout)", range=at_least(0, "0: no limit"), resumable=True,
    )  # fmt: skip
    # -- paths and runtime -------------------------------------------------------------------------
    run_dir: str = setting(
        "", PATHS, "new directory for the results; empty: runs/fed-<scenario>-<time>", resumable=True
    )
    resume: bool = setting(
        False, PATHS, "continue the run in run-dir from its last complete round", resumable=True
    )
    cache_dir: str = setting(
        "", PATHS, "where scenarios and features are cached; empty: $MMFED_CACHE_DIR or the default"
    )
    device: str = setting(
        "auto", PATHS, "auto (CUDA when present), cpu, cuda or cuda:N", check=_check_device, resumable=True
    )

    def validate(self) -> None:
        """Each setting against its declaration, then the rules between settings."""
        for item in declared():
            item.validate(getattr(self, item.name))
        if self.min_sites > self.sites:
            raise ConfigError("min-sites", f"{self.min_sites} is more than the {self.sites} sites of the run")
        if self.target_epsilon > 0 and self.noise_multiplier > 0:
            raise ConfigError(
                "noise-multiplier", "give target-epsilon or noise-multiplier, not both (σ follows from ε)"
            )

    # -- conversions -------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: dict[str, Any], where: str = "run config") -> FederationConfig:
        """Accepts Flower's dashed keys (`local-epochs`) or underscores; unknown keys are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name == "num_server_rounds":  # Flower's conventional name
                name = "rounds"
            if name not in fields:
                known = ", ".join(sorted(f.replace("_", "-") for f in fields))
                raise ConfigError(key, f"unknown setting in {where}; known: {known}")
            kwargs[name] = _coerce(key, value, fields[name].type)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> FederationConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("config", f"{path} not found") from None
        except UnicodeDecodeError:  # its text would quote the file around the bad byte
            raise ConfigError("config", f"{path}: not UTF-8 text; save it as UTF-8") from None
        except OSError as exc:
            raise ConfigError("config", f"{path} cannot be read ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path}: not valid TOML ({exc})") from None
        except (ValueError, RecursionError):  # an integer past 4300 digits, arrays nested thousands deep
            raise ConfigError("config", f"{path}: not valid TOML (huge number or deep nesting)") from None
        if "federation" in data and len(data) > 1:  # they would be ignored
            stray = ", ".join(sorted(k for k in data if k != "federation"))
            raise ConfigError("config", f"{path}: {stray} outside [federation]; move every setting into it")
        data = data.get("federation", data)
        if not isinstance(data, dict):
            raise ConfigError("config", f"{path}: [federation] must be a table of settings")
        return cls.from_mapping(
            {**data, **{k: v for k, v in overrides.items() if v is not None}}, where=str(path)
        )

    def to_run_config(self) -> dict[str, Any]:
        """Flat, Flower-style (dashed keys, scalar values) for the ServerApp/ClientApp contexts."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> FederationConfig:
        return dataclasses.replace(self, **changes)

    # -- what the rest of the system needs ---------------------------------------------------------
    def round_lr(self, server_round: int) -> float:
        """Sites' learning rate in a round: late rounds take smaller steps, so the global model settles
        instead of being pulled back and forth by non-IID sites."""
        base = self.lr or DEFAULT_LR[self.optimizer]
        if self.lr_schedule == "constant" or self.rounds <= 1:
            return base
        progress = min(max(server_round - 1, 0) / (self.rounds - 1), 1.0)
        return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    @property
    def private(self) -> bool:
        return self.target_epsilon > 0 or self.noise_multiplier > 0

    def identity_hash(self) -> str:
        """What must not change between a run and its resumption (not rounds, run dir or resume). A
        setting added later counts only when it differs from its default, so that a run recorded before
        it keeps its identity and can still be resumed."""
        defaults = FederationConfig()
        keep = {
            k: v
            for k, v in to_jsonable(self).items()
            if k not in RESUMABLE_SETTINGS and not (k in ADDED_SETTINGS and v == getattr(defaults, k))
        }
        return config_hash(keep)


# settings that may differ between a run and its resumption
RESUMABLE_SETTINGS = tuple(f.name for f in dataclasses.fields(FederationConfig) if f.metadata["resumable"])
# settings added after runs were recorded without them (identity_hash leaves them out at their default)
ADDED_SETTINGS = ("site_max_epsilon",)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = str(annotation)
    try:
        if isinstance(value, list | dict) or (isinstance(value, bool) and kind != "bool"):
            raise TypeError(value)  # `rounds = true` is no 1, `augment = [0]` no true
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if type(value) is not bool and not (type(value) is int and value in (0, 1)):
                raise TypeError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if not isinstance(value, str | int | float):  # a TOML date is no path or name
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a valid {kind}") from None
