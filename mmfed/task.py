"""A federation's task, declared in a `task.toml`: its labels and modalities, how each modality becomes
tensors, the model, and which manifest columns feed which modality.

    [task]
    name = "chest-triage"
    labels = ["normal", "pneumonia", "covid"]
    modalities = ["image", "text", "tabular"]

    [columns]                  # manifest columns (default: the modality's own name)
    id = "patient_id"
    label = "finding"
    image = "xray_file"
    text = "note"
    tabular = ["age", "sex"]   # one column per feature, or one inline `age=54;sex=M` column by name

    [model]
    fusion = "attention"

    [image]
    size = 64

    [tabular]
    numeric = { age = 100.0 }  # value / scale goes to the model
    categorical = { sex = ["M", "F"] }

The server builds the model from it and sends it with every message; each site reads its manifest through
it and refuses one it has not approved (site.toml `approved_models` holds `Task.approval()`). Built-in
scenarios describe their task the same way (mmfed.data.scenarios). Text de-identification is not part of
the task: the run and each site's policy decide it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfed.config import (
    MODALITIES,
    AudioSpec,
    DataSpec,
    ImageSpec,
    ModelConfig,
    TabularSpec,
    TextSpec,
    VideoSpec,
    config_hash,
    parse_modalities,
)
from mmfed.errors import ConfigError

TASK_FILE = "task.toml"
ROW_COLUMNS = ("id", "label", "split")
# [text] keys a task may set: de-identification and the label-leak guard belong to the run and the site
TEXT_KEYS = ("max_length",)


@dataclass(frozen=True)
class Columns:
    """Which manifest column feeds what. `tabular` is one inline `name=value;...` column, or a tuple of
    columns, one per tabular feature (named like the feature)."""

    id: str = "id"
    label: str = "label"
    split: str = "split"
    image: str = "image"
    audio: str = "audio"
    text: str = "text"
    video: str = "video"
    tabular: str | tuple[str, ...] = "tabular"

    @property
    def tabular_features(self) -> tuple[str, ...]:
        """The per-feature tabular columns ((): one inline column)."""
        return self.tabular if isinstance(self.tabular, tuple) else ()

    def source(self, name: str) -> str:
        """The manifest column behind `name` (id, label, split or a modality), as the site's file says it."""
        value = getattr(self, name)
        return ", ".join(value) if isinstance(value, tuple) else value

    def header_names(self) -> tuple[str, ...]:
        """Every column this mapping reads."""
        names = [getattr(self, n) for n in (*ROW_COLUMNS, "image", "audio", "text", "video")]
        return (*names, *(self.tabular_features or (self.tabular,)))


@dataclass(frozen=True)
class ModelSettings:
    """The model part of a task; input shapes follow from the tensor settings (ModelConfig.for_data)."""

    fusion: str = "attention"
    hidden_dim: int = 64
    image_encoder: str = "cnn"
    text_encoder: str = "bert-small"
    freeze_text: bool = False
    attention_heads: int = 4
    dropout: float = 0.1


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]
    modalities: tuple[str, ...]
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSettings = field(default_factory=ModelSettings)
    columns: Columns = field(default_factory=Columns)

    def model_config(self) -> ModelConfig:
        return ModelConfig.for_data(
            self.data,
            modalities=self.modalities,
            num_classes=len(self.labels),
            **dataclasses.asdict(self.model),
        )

    def approval(self) -> str:
        """What a site approves (`approved_models`): the hash of everything the task declares."""
        return config_hash(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The task as task.toml holds it (only the sections of its own modalities)."""
        columns: dict[str, Any] = {n: getattr(self.columns, n) for n in (*ROW_COLUMNS, *self.modalities)}
        if "tabular" in columns and self.columns.tabular_features:
            columns["tabular"] = list(self.columns.tabular_features)
        out: dict[str, Any] = {
            "task": {"name": self.name, "labels": list(self.labels), "modalities": list(self.modalities)},
            "columns": columns,
            "model": dataclasses.asdict(self.model),
        }
        for modality in self.modalities:
            spec = getattr(self.data, modality)
            if modality == "tabular":
                out["tabular"] = {
                    "numeric": dict(spec.numeric),
                    "categorical": {name: list(values) for name, values in spec.categorical},
                }
            elif modality == "text":
                out["text"] = {k: getattr(spec, k) for k in TEXT_KEYS}
            else:
                out[modality] = dataclasses.asdict(spec)
        return out

    def to_json(self) -> str:
        """For the messages to the sites (Flower config values are scalars)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, where: str = "the server's task") -> Task:
        try:
            data = json.loads(text)
            json.dumps(data, ensure_ascii=False).encode()  # a lone surrogate escape is no text
        except (ValueError, RecursionError):
            raise ConfigError(where, "is not valid JSON") from None
        return task_from_dict(data, where)


def load_task(path: str | Path) -> Task:
    """Read and validate a task.toml; every error names the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(
            "task", f"{path} not found; draft one with `mmfed task init --from-site DIR`"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError("task", f"{path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError("task", f"{path} cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("task", f"{path}: not valid TOML ({exc})") from None
    except (ValueError, RecursionError):  # an integer past 4300 digits, arrays nested thousands deep
        raise ConfigError("task", f"{path}: not valid TOML (a number too long or nesting too deep)") from None
    return task_from_dict(data, str(path))


def task_from_dict(data: Any, where: str) -> Task:
    if not isinstance(data, dict):
        raise ConfigError(where, "must be a table of sections")
    sections = ("task", "columns", "model", *MODALITIES)
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(f"{where}: [{name}]", _unknown(name, sections))
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}]", "must be a table, e.g. [model] on a line of its own")
    head = data.get("task")
    if head is None:
        raise ConfigError(f"{where}: [task]", "missing; it names the task, its labels and modalities")
    _known(head, ("name", "labels", "modalities"), f"{where}: task")
    name = head.get("name", "")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: task.name", 'give the task a name, e.g. name = "chest-triage"')
    labels = _labels(head.get("labels"), f"{where}: task.labels")
    modalities = parse_modalities(_strings(head.get("modalities"), f"{where}: task.modalities"),
                                  f"{where}: task.modalities")  # fmt: skip
    for modality in MODALITIES:
        if modality in data and modality not in modalities:
            raise ConfigError(
                f"{where}: [{modality}]", f"{modality} is not one of the task's modalities {list(modalities)}"
            )
    spec = _data_spec(data, where)
    task = Task(
        name=name.strip(),
        labels=labels,
        modalities=modalities,
        data=spec,
        model=_build(ModelSettings, data.get("model", {}), f"{where}: model"),
        columns=_columns(data.get("columns", {}), modalities, spec, where),
    )
    try:
        task.model_config().validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: model.{exc.setting}", exc.problem) from None
    return task


def _data_spec(data: dict[str, Any], where: str) -> DataSpec:
    text = data.get("text", {})
    _known(text, TEXT_KEYS, f"{where}: text")
    spec = DataSpec(
        audio=_build(AudioSpec, data.get("audio", {}), f"{where}: audio"),
        image=_build(ImageSpec, data.get("image", {}), f"{where}: image"),
        text=_build(TextSpec, text, f"{where}: text"),
        video=_build(VideoSpec, data.get("video", {}), f"{where}: video"),
        tabular=_tabular(data.get("tabular"), f"{where}: tabular"),
    )
    try:
        spec.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.setting}", exc.problem) from None
    return spec


def _tabular(table: dict[str, Any] | None, where: str) -> TabularSpec:
    if table is None:
        return TabularSpec()
    _known(table, ("numeric", "categorical"), where)
    numeric = table.get("numeric", {})
    categorical = table.get("categorical", {})
    if not isinstance(numeric, dict) or not isinstance(categorical, dict):
        raise ConfigError(where, 'write numeric = { age = 100.0 } and categorical = { sex = ["M", "F"] }')
    for feature, scale in numeric.items():
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ConfigError(f"{where}.numeric.{feature}", f"must be a number (the scale), got {scale!r}")
    # a manifest writes name=value;... and strips cells: names and values that could never match are errors
    for kind, features in (("numeric", numeric), ("categorical", categorical)):
        for feature in features:
            if feature != feature.strip() or not feature or ";" in feature or "=" in feature:
                raise ConfigError(f"{where}.{kind}.{feature}", "name it without ';', '=' or edge spaces")
    categorical = {k: _strings(v, f"{where}.categorical.{k}") for k, v in categorical.items()}
    for feature, values in categorical.items():
        if any(";" in v or "=" in v for v in values):
            raise ConfigError(f"{where}.categorical.{feature}", f"no value may hold ';' or '='; got {values}")
    return TabularSpec(
        numeric=tuple((str(k), float(v)) for k, v in numeric.items()),
        categorical=tuple((str(k), tuple(v)) for k, v in categorical.items()),
    )


def _columns(table: dict[str, Any], modalities: tuple[str, ...], spec: DataSpec, where: str) -> Columns:
    allowed = (*ROW_COLUMNS, *modalities)
    for key in table:
        if key not in allowed:
            problem = (
                f"{key} is not one of the task's modalities {list(modalities)}"
                if key in MODALITIES
                else _unknown(key, allowed)
            )
            raise ConfigError(f"{where}: columns.{key}", problem)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "tabular" and isinstance(value, list):
            values[key] = tuple(_strings(value, f"{where}: columns.tabular"))
            declared = [n for n, _ in spec.tabular.numeric] + [n for n, _ in spec.tabular.categorical]
            if sorted(values[key]) != sorted(declared):
                raise ConfigError(
                    f"{where}: columns.tabular",
                    f"lists {list(values[key])} but [tabular] declares the features {declared}; "
                    "name each feature's column once (a column is named like its feature)",
                )
        elif isinstance(value, str) and value.strip():
            values[key] = value.strip()
        else:
            raise ConfigError(f"{where}: columns.{key}", f"must be a column name, got {value!r}")
    columns = Columns(**values)
    read = [getattr(columns, n) for n in ROW_COLUMNS]
    for modality in modalities:
        read += (
            columns.tabular_features or [columns.tabular]
            if modality == "tabular"
            else [getattr(columns, modality)]
        )
    repeated = sorted({c for c in read if read.count(c) > 1})
    if repeated:
        raise ConfigError(f"{where}: columns", f"column {repeated[0]!r} feeds two things; give each its own")
    return columns


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    """A spec dataclass from a TOML table: every key known, every value of its field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    keys = TEXT_KEYS if cls is TextSpec else tuple(fields)
    _known(table, keys, where)
    values = {}
    for key, value in table.items():
        kind = str(fields[key].type)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(kind, False)
        if not ok:
            raise ConfigError(f"{where}.{key}", f"must be a {kind}, got {value!r}")
        values[key] = float(value) if kind == "float" else value
    return cls(**values)


def _known(table: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in keys:
            raise ConfigError(f"{where}.{key}", _unknown(key, keys))


def _unknown(key: str, known: tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    return "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(known)}")


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(where, f'must be a list of names, e.g. ["a", "b"]; got {value!r}')
    return [v.strip() for v in value]


def _labels(value: Any, where: str) -> tuple[str, ...]:
    labels = _strings(value, where)
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(where, f"label {repeated[0]!r} is listed twice")
    if len(labels) < 2:
        raise ConfigError(where, "list at least two labels")
    return tuple(labels)
