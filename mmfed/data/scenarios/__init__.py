"""Built-in scenarios: each turns a data source into site directories plus the task they hold (labels,
modalities, tensor settings: `Scenario.task`, what `mmfed data prepare` writes as task.toml).

- `digits-av`  (default, embedded) scikit-learn's handwritten digits + espeak-ng spoken digits, 6 voice sites
- `digits-public` (embedded) typeset digits + spoken digits in other voices: public pretraining data that
               no digits-av site holds (what `make run` pretrains on)
- `fsdd-mnist` (needs --data-dir)  FSDD spoken digits + MNIST images, 6 speaker sites
- `fsdd-mnist-public` (needs --data-dir) MNIST images no fsdd-mnist site holds + synthetic speech: public
               pretraining data for fsdd-mnist
- `covid-cxr`  (needs --data-dir) chest X-ray + clinical note, COVID-19 vs other, regional hospital sites
- `grid-av`    (needs --data-dir) GRID clips: video + audio + transcript, a smoke test of every modality
- `synthetic`  generated image/audio/text(/video) data, any number of sites and samples
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmfed.config import AudioSpec, DataSpec, ImageSpec, TextSpec, VideoSpec, parse_modalities
from mmfed.data.cache import default_cache_dir
from mmfed.data.manifest import SiteManifest, load_manifest
from mmfed.errors import ConfigError
from mmfed.task import Columns, ModelSettings, Task


@dataclass(frozen=True)
class Builtin:
    """A built-in scenario: the task its sites hold and how they are written. Adding one is a module
    with a `build_sites(request)` function and a row in BUILTINS."""

    name: str
    labels: tuple[str, ...]
    modalities: tuple[str, ...] | None  # None: the run chooses (synthetic writes what it is asked for)
    builder: str  # "module:function" under mmfed.data.scenarios, imported only when the sites are built
    spec: DataSpec = field(default_factory=DataSpec)
    needs: str = ""  # what --data-dir must hold ("": generated, no real data)
    natural_sites: bool = False  # the data decides how many sites there are (a run's count must match)


@dataclass(frozen=True)
class BuildRequest:
    cache: Path
    data_dir: Path | None
    seed: int
    num_sites: int
    samples_per_site: int
    modalities: tuple[str, ...]

    def root(self, name: str) -> Path:
        """Where a scenario's build goes in the cache: one per data folder and seed."""
        if self.data_dir is None:
            return self.cache / "scenarios" / f"{name}-s{self.seed}"
        import hashlib

        tag = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:8]
        return self.cache / "scenarios" / f"{name}-{tag}-s{self.seed}"


DIGITS = tuple(str(d) for d in range(10))
BUILTINS = {
    b.name: b
    for b in (
        Builtin("digits-av", DIGITS, ("image", "audio"), "digits_av:build_sites"),
        Builtin(
            "digits-public", DIGITS, ("image", "audio"), "digits_public:build_sites", natural_sites=True
        ),
        Builtin(
            "fsdd-mnist", DIGITS, ("image", "audio"), "fsdd_mnist:build_sites",
            needs="a folder with fsdd/ and mnist/", natural_sites=True,
        ),
        Builtin(
            "fsdd-mnist-public", DIGITS, ("image", "audio"), "fsdd_mnist_public:build_sites",
            needs="a folder with fsdd/ and mnist/", natural_sites=True,
        ),
        Builtin(
            "covid-cxr", ("covid-19", "other"), ("image", "text", "tabular"), "covid_cxr:build_sites",
            # grey X-rays at 64 px; notes are long (median ~340 characters), so 128 tokens
            spec=DataSpec(image=ImageSpec(size=64, channels=1), text=TextSpec(max_length=128)),
            needs="a folder in the COVID-19 image data collection layout: metadata.csv + images/",
            natural_sites=True,
        ),
        Builtin(
            "grid-av", ("bin", "lay", "place", "set"), ("audio", "text", "video"), "grid_av:build_sites",
            spec=DataSpec(
                audio=AudioSpec(sample_rate=16000, duration_s=3.0),
                text=TextSpec(max_length=16),
                video=VideoSpec(frames=8, size=48, channels=3),
            ),
            needs="a folder with transcripts.csv + video/*.mpg GRID clips",
        ),
        Builtin("synthetic", DIGITS, None, "synthetic:build_sites"),
    )
}  # fmt: skip
SCENARIOS = tuple(BUILTINS)
# scenarios whose natural sites come from the data (a run's site count must match)
FIXED_SITE_SCENARIOS = tuple(name for name, b in BUILTINS.items() if b.natural_sites)


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise ConfigError("scenario", f"{name!r} is not one of {', '.join(SCENARIOS)}")
    return BUILTINS[name]


@dataclass
class Scenario:
    name: str
    sites: list[Path]
    labels: list[str]
    modalities: tuple[str, ...]  # what the scenario's data holds
    spec: DataSpec = field(default_factory=DataSpec)
    # lazy scenarios (synthetic) write a site only when it is first used: a 1,000-site run on one
    # machine should not make every process write every site
    make_site: Callable[[int], Path] | None = field(default=None, repr=False)
    columns: Columns = field(default_factory=Columns)  # which manifest columns feed what

    def task(
        self, model: ModelSettings | None = None, modalities: str | tuple[str, ...] | None = None
    ) -> Task:
        """The task these sites hold, for the run's modalities (all the scenario has when none)."""
        return Task(
            name=self.name,
            labels=tuple(self.labels),
            modalities=self.run_modalities(modalities),
            data=self.spec,
            model=model or ModelSettings(),
            columns=self.columns,
        )

    @classmethod
    def of_task(cls, task: Task, sites: list[Path]) -> Scenario:
        """The user's own site directories, read as a task file says."""
        return cls(task.name, sites, list(task.labels), task.modalities, task.data, columns=task.columns)

    def run_modalities(self, requested: str | tuple[str, ...] | None) -> tuple[str, ...]:
        """The modalities a run asked for (all the scenario has when none), checked against the data."""
        mods = parse_modalities(requested) if requested else self.modalities
        missing = [m for m in mods if m not in self.modalities]
        if missing:
            raise ConfigError(
                "modalities",
                f"scenario {self.name} has no {', '.join(missing)} data "
                f"(it has {', '.join(self.modalities)})",
            )
        return mods

    def site(self, index: int) -> Path:
        return self.make_site(index) if self.make_site else self.sites[index]

    def load_sites(self, on_bad_row: str = "fail", report_dir: Path | None = None) -> list[SiteManifest]:
        """Every site's manifest, validated, all with the scenario's class order."""
        out = []
        for index in range(len(self.sites)):
            site = self.site(index)
            report = None if report_dir is None else Path(report_dir) / f"skipped_rows_{site.name}.csv"
            out.append(
                load_manifest(
                    site, on_bad_row=on_bad_row, report_path=report, labels=self.labels, columns=self.columns
                )
            )
        return out


def write_task_file(scenario: Scenario) -> Path:
    """The scenario's task.toml, beside its site directories (rewritten: it is derived, like them)."""
    from mmfed.files import write_atomic
    from mmfed.task import TASK_FILE

    path = Path(os.path.commonpath([str(s.parent) for s in scenario.sites])) / TASK_FILE
    write_atomic(path, f"# the task of scenario {scenario.name}, written by mmfed data prepare\n\n"
                 + scenario.task().to_toml())  # fmt: skip
    return path


def prepare_scenario(
    name: str,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    num_sites: int = 6,
    samples_per_site: int = 50,
    modalities: str | tuple[str, ...] = ("image", "audio", "text"),
    build: bool = True,
) -> Scenario:
    """Build (once, into the cache) and describe the named scenario.

    With build=False only the description (labels, modalities, DataSpec) and no sites: what a deployed
    server needs to build the model, without the sites' data."""
    scenario = describe_scenario(name, modalities)
    if not build:
        return scenario
    entry = builtin(name)
    if entry.needs and data_dir is None:
        raise ConfigError("data_dir", f"{name} reads real data: pass --data-dir ({entry.needs})")
    request = BuildRequest(
        cache=Path(cache_dir) if cache_dir else default_cache_dir(),
        data_dir=Path(data_dir).resolve() if data_dir is not None else None,
        seed=seed,
        num_sites=num_sites,
        samples_per_site=samples_per_site,
        modalities=scenario.modalities,
    )
    import importlib

    module, function = entry.builder.split(":")
    build_sites = getattr(importlib.import_module(f"mmfed.data.scenarios.{module}"), function)
    scenario.sites, scenario.make_site = build_sites(request)
    return scenario


def describe_scenario(name: str, modalities: str | tuple[str, ...] = ("image", "audio", "text")) -> Scenario:
    """A scenario's labels, modalities and DataSpec, without building or reading any data."""
    entry = builtin(name)
    held = entry.modalities or parse_modalities(modalities)
    return Scenario(name, [], list(entry.labels), held, spec=entry.spec)


def from_site_dirs(site_dirs: list[str | Path]) -> Scenario:
    """A scenario over the user's own site directories (the documented manifest format).

    The class list comes from labels.txt (which must agree across sites) or, without one, from the union
    of labels found; the modalities are those any site's manifest fills. Rows are validated later, when
    the sites are loaded.
    """
    import csv

    from mmfed.config import MODALITIES
    from mmfed.data.manifest import MANIFEST_NAME, read_labels, sort_labels

    sites = [Path(d) for d in site_dirs]
    if not sites:
        raise ConfigError("site_dir", "name at least one site directory")
    rows = []
    for site in sites:
        path = site / MANIFEST_NAME
        if not path.is_file():
            raise ConfigError("site_dir", f"{path} not found; a site directory holds manifest.csv")
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows += [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(fh)]
    declared = {site: read_labels(site) for site in sites if (site / "labels.txt").exists()}
    if declared:
        first_site, labels = next(iter(declared.items()))
        for site, other in declared.items():
            if other != labels:
                raise ConfigError(
                    "site_dir",
                    f"{site}/labels.txt differs from {first_site}/labels.txt; all sites need one class list",
                )
    else:
        labels = sort_labels(r["label"] for r in rows if r.get("label"))
    present = [m for m in MODALITIES if any(r.get(m) for r in rows)]
    if not present:
        raise ConfigError("site_dir", "no manifest row fills any of image, audio, text, video")
    return Scenario("site-dirs", sites, list(labels), parse_modalities(present))
