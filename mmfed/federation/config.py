"""The federation's run configuration: one typed object built from Flower's flat run config (or a TOML
file, or the `mmfed simulate` options), validated with messages that name the setting."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfed.config import FUSIONS, TEXT_ENCODERS, ModelConfig, config_hash, parse_modalities, to_jsonable
from mmfed.errors import ConfigError

DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.05}

# settings that may differ between a run and its resumption
RESUMABLE_SETTINGS = ("rounds", "run_dir", "resume", "device", "site_wait_s", "anchor_file")


@dataclass(frozen=True)
class FederationConfig:
    scenario: str = "digits-av"
    data_dir: str = ""  # fsdd-mnist: folder with fsdd/ and mnist/
    sites: int = 6
    samples_per_site: int = 50  # synthetic only
    partition: str = "natural"  # natural | iid | dirichlet:ALPHA
    modalities: str = ""  # empty: every modality the scenario has
    fusion: str = "attention"
    rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.0  # 0: the optimizer's default (AdamW 2e-3, SGD 0.05)
    optimizer: str = "adamw"  # adamw, or sgd (momentum 0.9)
    lr_schedule: str = "cosine"  # cosine: the sites' learning rate decays over the rounds to 10%; or constant
    augment: bool = True
    modality_dropout: float = 0.3  # hide one of a training sample's modalities with this probability
    missing_modality_rate: float = 0.0  # this share of the sites lacks one modality entirely (seeded)
    per_encoder_averaging: bool = True  # average each encoder over the sites that trained it (else all)
    text_encoder: str = "bert-small"  # or minilm: the pretrained all-MiniLM-L6-v2
    freeze_text: bool = False  # minilm: freeze all of it (else its last layer trains)
    deidentify: bool = True  # scrub names, dates, ages, contacts, ids, hospitals from text before tokenising
    mask_diagnosis: bool = False  # label-leak guard: mask diagnosis terms in text (covid-cxr notes name it)
    seed: int = 0
    min_sites: int = 2  # fewer usable updates than this in a round stops the run
    fraction_fit: float = 1.0
    max_update_norm: float = 100.0  # an update (delta) with a larger L2 norm is rejected
    run_dir: str = ""
    resume: bool = False
    cache_dir: str = ""
    freeze_encoders: bool = False  # train only fusion + classifier (DP fine-tuning of a pretrained model)
    initial_model: str = ""  # safetensors weights to start from (e.g. trained on public data); "" = random
    server_test_dir: str = ""  # a site dir whose test split the server evaluates every round
    device: str = "auto"
    site_wait_s: float = 120.0  # how long the server waits for min-sites sites to connect
    # differential privacy, proposed to the sites (each site's site.toml has the last word)
    target_epsilon: float = 0.0  # ε the whole planned run may spend per site (PRV); 0: not set
    noise_multiplier: float = 0.0  # σ; 0: derived from target-epsilon; both 0: no DP
    max_grad_norm: float = 1.0  # per-sample clipping norm C
    delta: float = 1e-5  # δ for sites without a policy of their own (a site.toml's δ wins)
    state_dir: str = ""  # simulation: each site's privacy state lives in STATE_DIR/<site>
    # server: a file every run appends each site's ledger head to, and hands sites the last one from, so a
    # site rolled back between runs is caught too (default: only this run directory's anchors.jsonl)
    anchor_file: str = ""
    grad_sample_mode: str = "ew"  # Opacus per-sample gradients: ew (fastest here), hooks, functorch
    # secure aggregation (Flower SecAgg+): the server only ever sees the sum of the sites' updates
    secure_aggregation: bool = False
    secagg_max_examples: int = 10000  # largest training set a site may weight its update by (max_weight)
    secagg_clipping_range: float = 1.0  # |update value| x examples / secagg-max-examples must fit in this

    def validate(self) -> None:
        from mmfed.data.scenarios import SCENARIOS

        if self.scenario not in SCENARIOS:
            raise ConfigError("scenario", f"{self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if self.fusion not in FUSIONS:
            raise ConfigError("fusion", f"{self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.modalities:
            parse_modalities(self.modalities)
        for name in ("sites", "rounds", "local_epochs", "batch_size", "min_sites", "samples_per_site"):
            if getattr(self, name) < 1:
                raise ConfigError(name.replace("_", "-"), f"must be >= 1, got {getattr(self, name)}")
        if self.min_sites > self.sites:
            raise ConfigError("min-sites", f"{self.min_sites} is more than the {self.sites} sites of the run")
        # NaN compares False both ways and inf passes `> 0`: each float must be finite, then in range, or
        # `target-epsilon = nan` would quietly mean "no DP" and `inf` a token σ
        for name, in_range, wants in (
            ("fraction_fit", lambda x: 0 < x <= 1, "in (0, 1]"),
            ("max_update_norm", lambda x: x > 0, "> 0"),
            ("modality_dropout", lambda x: 0 <= x < 1, "in [0, 1)"),
            ("missing_modality_rate", lambda x: 0 <= x <= 1, "in [0, 1]"),
            ("lr", lambda x: x >= 0, ">= 0 (0: the optimizer's default)"),
            ("site_wait_s", lambda x: x >= 0, ">= 0"),
            ("target_epsilon", lambda x: x >= 0, ">= 0 (0: not set)"),
            ("noise_multiplier", lambda x: x >= 0, ">= 0 (0: not set)"),
            ("max_grad_norm", lambda x: x > 0, "> 0"),
            ("delta", lambda x: 0 < x < 1, "in (0, 1), e.g. 1e-5"),
            ("secagg_clipping_range", lambda x: x > 0, "> 0"),
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and in_range(value)):
                raise ConfigError(name.replace("_", "-"), f"must be a finite number {wants}, got {value}")
        if self.secagg_max_examples < 1:
            raise ConfigError("secagg-max-examples", f"must be >= 1, got {self.secagg_max_examples}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(
                "text-encoder", f"{self.text_encoder!r} is not one of {', '.join(TEXT_ENCODERS)}"
            )
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError("optimizer", f"{self.optimizer!r}: use adamw or sgd")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError("lr-schedule", f"{self.lr_schedule!r}: use cosine or constant")
        if self.target_epsilon > 0 and self.noise_multiplier > 0:
            raise ConfigError(
                "noise-multiplier", "give target-epsilon or noise-multiplier, not both (σ follows from ε)"
            )
        if self.grad_sample_mode not in ("ew", "hooks", "functorch"):
            raise ConfigError("grad-sample-mode", f"{self.grad_sample_mode!r}: use ew, hooks or functorch")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError("device", f"{self.device!r}: use auto, cpu, cuda or cuda:N")
        _check_partition(self.partition)

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

    def model_config(self, scenario) -> ModelConfig:
        mods = scenario.run_modalities(self.modalities)
        return ModelConfig.for_data(
            scenario.spec,
            modalities=mods,
            num_classes=len(scenario.labels),
            fusion=self.fusion,
            text_encoder=self.text_encoder,
            freeze_text=self.freeze_text,
        )

    def identity_hash(self) -> str:
        """What must not change between a run and its resumption (not rounds, run dir or resume)."""
        keep = {k: v for k, v in to_jsonable(self).items() if k not in RESUMABLE_SETTINGS}
        return config_hash(keep)


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


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = str(annotation)
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a valid {kind}") from None
