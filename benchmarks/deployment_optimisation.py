"""Deployment optimisation: `mmfed export` on two real models — float torch vs float ONNX vs int8 (dynamic
and static) vs pruned 50% / 80% (and 50% structured): size, CPU latency at batch 1 and 32, accuracy.

Models: fsdd-mnist image+audio attention fusion (trained centrally, briefly, on the real FSDD + MNIST data
in ../shared/data) and covid-cxr image + MiniLM text + age/sex, late fusion (trained centrally, briefly,
on the real X-ray subset). Every variant is measured by `mmfed.use.export.export_model` in this one
process on all sites' test records: latency is the median of interleaved repeats, torch and onnxruntime
on one intra-op thread. The issue's goal: int8 at least 3x smaller and 1.5x faster at batch 32 on the
CPU, within 0.5 points of accuracy.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import shared_data, table  # noqa: E402

from mmfed.config import TrainConfig  # noqa: E402
from mmfed.data.scenarios import prepare_scenario  # noqa: E402
from mmfed.train.centralized import train_centralized  # noqa: E402
from mmfed.use.export import ExportSettings, export_model  # noqa: E402

VARIANTS = "float,onnx,int8,int8-static,prune50,prune80,prune50-structured"
GOAL = {"smaller": 3.0, "faster": 1.5, "points": 0.5}  # accuracy: at most 0.5 points lost
READING = (
    "Reading it: int8 pays where the time and the bytes are in MatMul and embeddings — covid-cxr's MiniLM "
    "text encoder — and not in fsdd-mnist's small conv encoders. There dynamic int8 quantises only the "
    "Linear layers (onnxruntime's dynamic ConvInteger is slower than float), so the convolutions' weights "
    "stay float (the file is ~2× smaller, not 3×), and most of the float graph's time is in ops int8 does "
    "not touch: GroupNorm (InstanceNormalization + Mul/Add), onnxruntime's NCHWc layout reorders, and "
    "`Where` — the exporter writes the audio encoder's AdaptiveAvgPool2d(4) over its uneven 10×16 map as "
    "masked gathers over [B, 64, 4, 3, 4, 3] windows. int8-static quantises the convolutions too (3× smaller) but runs slower: "
    "onnxruntime moves each QuantizeLinear above the MaxPool before it and runs MaxPool in uint8 (the "
    "MaxPool share of its profile), and every conv output is dequantised again for GroupNorm, which "
    "cannot be folded into the conv as BatchNorm can (BatchNorm is not DP-valid). On covid-cxr about half "
    "the bytes are MiniLM's word-embedding table (Gather): int8 quantises it, int8-static does not (hence "
    "~4× against ~1.5×). The accuracy goal cannot be resolved on covid-cxr's 48 test records (one record is "
    "2.08 points). Pruned models are stored and run dense: no smaller file, no faster inference — only the "
    "zipped size shows the zeros; 80% and structured pruning need the fine-tune described in "
    "docs/how-to/export-the-model.md before they are usable."
)
# (name, scenario, data folder under shared/data, modalities, model options, train settings, repeats)
MODELS = [
    ("fsdd-mnist", "fsdd-mnist", "", None, {"fusion": "attention"},
     TrainConfig(epochs=3, augment=False, seed=0), 30),
    ("covid-cxr", "covid-cxr", "covid_chestxray_subset", "image,text,tabular",
     {"fusion": "late", "text_encoder": "minilm"}, TrainConfig(epochs=4, batch_size=16, seed=0), 10),
]  # fmt: skip


def _profile(onnx_file: Path, gm, batch: dict, out: Path, runs: int = 8) -> list[tuple[str, float]]:
    """Share of an ONNX graph's time at batch 32 per op type (onnxruntime's profiler, 1 thread)."""
    import onnxruntime as ort

    from mmfed.use import onnx_model

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = 1, True
    options.profile_file_prefix = str(out / "profile")
    sess = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    feeds = onnx_model.feeds(gm.task, batch)
    for _ in range(2 + runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    passes = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    after_warmup = passes[1]["ts"] + passes[1]["dur"]  # the first two runs warm up
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if (
            event.get("cat") == "Node"
            and event["name"].endswith("_kernel_time")
            and event["ts"] > after_warmup
        ):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1
    return [(op, t / total) for op, t in per_op.most_common(5)]


def _float_weights(onnx_file: Path) -> list[tuple[str, int]]:
    """Bytes of float32 weights (initializers over 1,000 values) left in a graph, by the op reading them."""
    import onnx

    graph = onnx.load(onnx_file).graph
    readers = {name: node.op_type for node in graph.node for name in node.input}
    left: collections.Counter = collections.Counter()
    for tensor in graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.data_type == onnx.TensorProto.FLOAT and count > 1000:
            left[readers.get(tensor.name, "?")] += 4 * count
    return left.most_common(3)


def _diagnose(report: dict, out: Path) -> dict:
    """Where the float and int8 graphs spend their time, and which weights int8 left in float."""
    from mmfed.use.model_file import load_global_model
    from mmfed.use.records import read_records

    gm = load_global_model(report["model"]["path"])
    batch = read_records(gm, [Path(s) for s in report["_sites"]]).first(32)
    folder = Path(report["_out"])
    files = {"onnx": "model.onnx", "int8": "model-int8.onnx", "int8-static": "model-int8-static.onnx"}
    return {
        "profile": {v: _profile(folder / f, gm, batch, out) for v, f in files.items()},
        "float_weights": {v: _float_weights(folder / f) for v, f in files.items() if v != "onnx"},
    }


def _measure(name, scenario_name, folder, mods, options, train, repeats, data: Path, out: Path):
    scenario = prepare_scenario(scenario_name, data_dir=data / folder if folder else data)
    run = out / f"train-{name}"
    started = time.perf_counter()
    summary = train_centralized(scenario, run, modalities=mods, model_options=options, train=train)
    trained = time.perf_counter() - started
    print(f"{name}: trained to {summary['test_accuracy']:.2%} in {trained:.0f}s", flush=True)
    settings = ExportSettings(
        model=run, out=out / f"export-{name}", test_sites=tuple(scenario.sites), variants=VARIANTS,
        device="cpu", threads=1, repeats=repeats,
    )  # fmt: skip
    started = time.perf_counter()
    report = export_model(settings)
    report["_sites"] = [str(s) for s in scenario.sites]
    report["_seconds"] = {"train": trained, "export": time.perf_counter() - started}
    report["_out"] = str(settings.out)
    report["_diagnosis"] = _diagnose(report, out)
    print(f"{name}: exported in {report['_seconds']['export']:.0f}s", flush=True)
    return report


def _rows(report: dict) -> list[list[str]]:
    rows = {r["variant"]: r for r in report["variants"]}
    onnx_ms = rows["onnx"]["latency_ms"]
    out = []
    for r in report["variants"]:
        ms = r["latency_ms"]
        delta = r["accuracy_delta"]
        out.append([
            r["variant"], f"{r['bytes'] / 1e6:.2f} MB", f"{r['size_ratio']:.2f}×",
            f"{r['compressed_ratio']:.2f}×", f"{ms['1']:.2f}", f"{ms['32']:.1f}",
            f"{r['speedup']['32']:.2f}×", f"{onnx_ms['32'] / ms['32']:.2f}×",
            f"{r['accuracy']:.2%}", f"{delta:+.2f}",
        ])  # fmt: skip
    return out


def _verdict(name: str, report: dict) -> str:
    rows = {r["variant"]: r for r in report["variants"]}
    n = report["test"]["examples"]
    diagnosis = report["_diagnosis"]
    lines = []
    for variant in ("int8", "int8-static"):
        r = rows[variant]
        vs_onnx = rows["onnx"]["latency_ms"]["32"] / r["latency_ms"]["32"]
        changed = round((1 - r["vs_float"]["same_prediction"]) * n)
        checks = [
            (r["size_ratio"] >= GOAL["smaller"], f"{r['size_ratio']:.2f}× smaller"),
            (vs_onnx >= GOAL["faster"], f"{vs_onnx:.2f}× faster at batch 32 than float ONNX "
             f"({r['speedup']['32']:.2f}× than float torch)"),
            (r["accuracy_delta"] >= -GOAL["points"],
             f"{r['accuracy_delta']:+.2f} points ({changed} of {n} predictions changed)"),
        ]  # fmt: skip
        met = all(ok for ok, _ in checks)
        shown = "; ".join(f"{text} {'✓' if ok else '✗'}" for ok, text in checks)
        left = ", ".join(f"{op} {b / 1e6:.2f} MB" for op, b in diagnosis["float_weights"][variant]) or "none"
        lines.append(
            f"- {name} {variant}: goal **{'met' if met else 'not met'}** — {shown}. Float weights left: {left}."
        )
    for variant, ops in diagnosis["profile"].items():
        shares = ", ".join(f"{op} {share:.0%}" for op, share in ops)
        lines.append(f"  - {name} {variant}, time at batch 32 by op: {shares}.")
    lines.append(f"  - {n} test records: one record is {100 / n:.2f} points.")
    return "\n".join(lines)


def main() -> str:
    data = shared_data()
    if data is None:
        return "## Deployment optimisation\n\nskipped: ../shared/data not found\n"
    out = Path(tempfile.mkdtemp(prefix="mmfed-bench-export-"))
    reports = {m[0]: _measure(*m, data=data, out=out) for m in MODELS}
    header = ["variant", "size", "smaller", "zipped smaller", "ms b1", "ms b32", "faster b32 (vs torch)",
              "faster b32 (vs ONNX)", "accuracy", "Δ points"]  # fmt: skip
    parts = [
        "## Deployment optimisation",
        "",
        "`python benchmarks/deployment_optimisation.py` — `mmfed export` (mmfed.use.export) on two real models "
        "trained centrally and briefly: fsdd-mnist image+audio attention fusion (3 epochs, no augmentation, "
        "all 6 speakers) and covid-cxr X-ray + MiniLM note + age/sex, late fusion (4 epochs, batch 16, "
        "MiniLM's last layer trained). Each variant measured side by side in one process on all sites' test "
        "records; latency: CPU, one intra-op thread for torch and onnxruntime, median of interleaved repeats "
        "(30 for fsdd-mnist, 10 for covid-cxr), inputs the first test records. Sizes against the float "
        "checkpoint (.safetensors); *zipped*: the same ratio for zlib-compressed files (what pruning buys). "
        "int8 = onnxruntime dynamic quantisation of MatMul/Gemm/Gather (convolutions stay float); "
        "int8-static = QDQ Conv/MatMul/Gemm, per-channel weights, calibrated on 256 training records; "
        "pruneN = global L1 magnitude pruning of N% of the Conv/Linear weights (classifier kept dense), "
        "prune50-structured = 50% of each layer's output channels (L2), both made permanent and exported "
        "dense. Goal (issue 16): int8 ≥ 3× smaller, ≥ 1.5× faster at batch 32 (judged against float ONNX, "
        "the same runtime), losing at most 0.5 points of accuracy (a gain counts as met; the predictions "
        "that changed are counted beside it).",
    ]
    for name, report in reports.items():
        seconds = report["_seconds"]
        parts += [
            "",
            f"### {name} ({report['test']['examples']} test records; trained in {seconds['train']:.0f}s, "
            f"exported and measured in {seconds['export']:.0f}s)",
            "",
            table(header, _rows(report)),
        ]
    parts += ["", "Against the goal:", ""] + [_verdict(name, r) for name, r in reports.items()]
    parts += ["", READING]
    return "\n".join(parts)


if __name__ == "__main__":
    print(main())
