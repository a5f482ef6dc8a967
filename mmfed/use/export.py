"""`mmfed export`: the global model as files a site's hardware runs, each measured against the float torch
model side by side on the sites' test records.

Variants (`--variants`, comma-separated):
- `float`   the torch model as trained (the reference every other row is compared with; always measured);
- `onnx`    the float model as ONNX, run in onnxruntime; its probabilities must agree with torch's within
            1e-4 on every test record, or the export fails;
- `int8`    onnxruntime dynamic quantisation of the ONNX graph (mmfed.use.quantize);
- `int8-static`  onnxruntime static (QDQ) quantisation, calibrated on the sites' training records;
- `pruneN`, `pruneN-structured`  magnitude pruning (mmfed.use.prune): a .safetensors checkpoint (usable
            as `initial-model` of a federation) and its ONNX file (checked against the pruned torch model).

The output folder (new or empty) gets the files, report.json and the model card; what an export wrote is
removed again when it fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import mmfed
from mmfed.errors import MMFedError
from mmfed.files import write_atomic
from mmfed.protected import refuse_protected
from mmfed.runs import check_new_folder
from mmfed.train.loop import select_device
from mmfed.use import measure, onnx_model, quantize, variants
from mmfed.use.model_card import build_card, write_card
from mmfed.use.model_file import load_global_model
from mmfed.use.records import CALIBRATION_RECORDS, read_records
from mmfed.use.site_data import check_site_dir
from mmfed.use.variant_names import DEFAULT, TOLERANCE, parse_variants
from mmfed.use.variants import Built, Context

REPORT = "report.json"


@dataclass(frozen=True)
class ExportSettings:
    model: Path
    out: Path
    task: Path | None = None
    test_sites: tuple[Path, ...] = ()
    variants: str = DEFAULT
    device: str = "auto"
    threads: int = 1  # torch and onnxruntime intra-op threads while latency is measured
    repeats: int = 20  # interleaved timed runs of each variant at each batch size

    def check(self) -> list[str]:
        """The variants, once every setting is checked (before the model is read)."""
        refuse_protected("--out", self.out, reads=[self.model, self.task], folder=True,
                         instead="choose another --out")  # fmt: skip
        if self.threads < 1:
            raise MMFedError(f"--threads {self.threads}: give 1 or more")
        if self.repeats < 1:
            raise MMFedError(f"--repeats {self.repeats}: give 1 or more")
        names = parse_variants(self.variants)
        check_out_dir(self.out)
        for site in self.test_sites:
            check_site_dir(site)
        if "int8-static" in names and not self.test_sites:
            raise MMFedError(
                "--variants int8-static calibrates on the training records of the --test-site directories; "
                "give --test-site, or leave int8-static out"
            )
        return names


def check_out_dir(out: Path) -> None:
    """Refused before anything runs: a file, a folder under a file, or a folder that is not empty."""
    check_new_folder(out, "--out", "an earlier export")


@contextlib.contextmanager
def undone_on_failure(out: Path) -> Iterator[None]:
    """What the export wrote is removed again if it fails or is interrupted (the folder was new or empty)."""
    created = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if created is not None:
                shutil.rmtree(created)
            else:
                for child in out.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def export_model(
    settings: ExportSettings, status: Callable[[str], None] = lambda text: None
) -> dict[str, Any]:
    """Build, check and measure every variant; write the files, report.json and the model card."""
    names = settings.check()
    device = select_device(settings.device)
    status("loading the model")
    gm = load_global_model(settings.model, settings.task)
    status("reading the test records")
    records = read_records(gm, list(settings.test_sites), calibrate="int8-static" in names)
    out = Path(settings.out)
    with undone_on_failure(out):
        ctx = Context(gm, out, records, device, settings.threads)
        built = []
        for name in names:
            status(f"building {name}")
            built.append(variants.build(ctx, name))
        status(f"timing {len(built)} variants at batch sizes {', '.join(map(str, measure.LATENCY_BATCHES))}")
        latency = time_variants(ctx, built, settings.repeats)
        report = make_report(ctx, settings, built, latency)
        write_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")
        write_card(out, build_card(gm, report))
    return report


def time_variants(ctx: Context, built: list[Built], repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds per forward pass of each variant at each batch size, all on the CPU with the
    same thread count, timed round-robin in this process."""
    result: dict[str, dict[str, float]] = {b.variant: {} for b in built}
    with measure.torch_threads(ctx.threads):
        for size in measure.LATENCY_BATCHES:
            batch = ctx.records.first(size) if ctx.records else onnx_model.example_batch(ctx.gm.task, size)
            runs = {
                b.variant: (
                    measure.torch_runner(b.runner, batch)
                    if b.runtime == "torch"
                    else measure.onnx_runner(b.runner, onnx_model.feeds(ctx.gm.task, batch))
                )
                for b in built
            }
            for name, seconds in measure.interleaved(runs, repeats).items():
                result[name][str(size)] = seconds * 1000
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _rows(ctx: Context, built: list[Built], latency: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    labels = ctx.records.labels if ctx.records else None
    base = built[0]  # the float torch model
    base_size = measure.file_size(base.file)
    base_accuracy = measure.accuracy(base.probabilities, labels) if labels is not None else None
    rows = []
    for b in built:
        size = base_size if b is base else measure.file_size(b.file)
        accuracy = measure.accuracy(b.probabilities, labels) if labels is not None else None
        rows.append(
            {
                "variant": b.variant,
                "file": str(b.file) if b is base else b.file.name,
                "runtime": b.runtime,
                **size,
                "size_ratio": _ratio(base_size["bytes"], size["bytes"]),
                "compressed_ratio": _ratio(base_size["compressed_bytes"], size["compressed_bytes"]),
                "latency_ms": latency[b.variant],
                "speedup": {k: _ratio(latency["float"][k], v) for k, v in latency[b.variant].items()},
                "accuracy": accuracy,
                "accuracy_delta": None
                if accuracy is None or base_accuracy is None
                else round((accuracy - base_accuracy) * 100, 3),
                **b.extra,
            }
        )
    return rows


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"mmfed": mmfed.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}  # fmt: skip


def make_report(
    ctx: Context, settings: ExportSettings, built: list[Built], latency: dict[str, dict[str, float]]
) -> dict[str, Any]:
    records = ctx.records
    return {
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": ctx.gm.describe(),
        "test": None
        if records is None
        else {"split": "test", "sites": records.sites, "examples": records.examples},
        "settings": {
            "variants": [b.variant for b in built],
            "device": str(ctx.device),
            "threads": settings.threads,
            "repeats": settings.repeats,
            "latency_batches": list(measure.LATENCY_BATCHES),
            "latency_inputs": "the first test records" if records else "generated records (no --test-site)",
            "onnx_opset": onnx_model.OPSET,
            "onnx_tolerance": TOLERANCE,
            "int8_dynamic_ops": quantize.DYNAMIC_OPS,
            "int8_static_ops": quantize.STATIC_OPS,
            "calibration_records": CALIBRATION_RECORDS if "int8-static" in latency else None,
        },
        "variants": _rows(ctx, built, latency),
        "versions": _versions(),
    }
