"""The model card written beside an export (model_card.json, and the same as model_card.md): what the
model is for (task, labels, modalities), how it was trained (run, rounds, sites, each site's ε and δ or
"no DP"), how each exported variant did on the test records, the export settings and the date.

ε is what each site reported to the server with its updates, as the checkpoint recorded it at its round;
a site's own ledger is the authority on what it spent (`mmfed audit` recomputes it from the ledger).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmfed.files import write_atomic
from mmfed.use.model_file import GlobalModel

EPSILON_NOTE = (
    "ε is the cumulative privacy spend each site reported to the server with its last released update "
    "(PRV accountant; the RDP bound beside it), as the checkpoint recorded it at round {round}. It is the "
    "sites' report, not a server-side guarantee: each site's own ledger is the authority (`mmfed audit`)."
)


def training_kind(meta: dict[str, Any]) -> str:
    if "round" in meta:
        return "federated"
    if meta.get("kind") == "centralized" or "epochs" in meta:
        return "centralised"
    return "unknown"


def _run_sites(gm: GlobalModel) -> list[str]:
    """Sites whose update was accepted up to the checkpoint's round, from its run directory's metrics."""
    metrics = gm.path.parent.parent / "metrics.jsonl"
    if gm.path.parent.name != "checkpoints" or not metrics.is_file():
        return []
    upto = gm.meta.get("round", 0)
    found = set()
    try:
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if row.get("kind") == "fit" and row.get("status") == "accepted" and row.get("round", 0) <= upto:
                found.add(str(row["site"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return sorted(found)


def privacy(gm: GlobalModel) -> dict[str, Any]:
    meta = gm.meta
    reported = meta.get("site_epsilon") if isinstance(meta.get("site_epsilon"), dict) else {}
    if not meta.get("private"):
        how = "trained centrally (mmfed train)" if training_kind(meta) == "centralised" else "not private"
        return {"dp": False, "summary": f"no DP ({how})", "sites": {}}
    sites = {
        str(site): {k: v.get(k) for k in ("epsilon_prv", "epsilon_rdp", "delta")}
        for site, v in sorted(reported.items())
        if isinstance(v, dict)
    }
    summary = (
        f"DP-SGD at each site; largest reported ε {max(s['epsilon_prv'] or 0 for s in sites.values()):.3g}"
        if sites
        else "DP-SGD at each site, but no site had reported ε by this round"
    )
    return {
        "dp": True,
        "summary": summary,
        "sites": sites,
        "note": EPSILON_NOTE.format(round=meta.get("round", "?")),
    }


def build_card(gm: GlobalModel, report: dict[str, Any]) -> dict[str, Any]:
    meta = gm.meta
    sites = sorted(set(_run_sites(gm)) | set(privacy(gm)["sites"]))
    return {
        "model": {
            "source": str(gm.path),
            "task": gm.task.name,
            "task_hash": gm.task.approval(),
            "labels": list(gm.labels),
            "modalities": list(gm.modalities),
            "training": training_kind(meta),
            "run_id": meta.get("run_id"),
            "rounds": meta.get("round"),
            "epochs": meta.get("epochs"),
            "sites": sites,
            "sites_accepted_last_round": meta.get("sites_accepted"),
            "secure_aggregation": meta.get("secure_aggregation"),
            "preprocessing": gm.preprocessing,
        },
        "privacy": privacy(gm),
        "evaluation": report["test"],
        "variants": [
            {k: row.get(k) for k in ("variant", "file", "bytes", "size_ratio", "accuracy", "accuracy_delta")}
            for row in report["variants"]
        ],
        "export_settings": report["settings"],
        "versions": report["versions"],
        "created": report["created"],
    }


def _value(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct and isinstance(value, float):
        return f"{value:.2%}"
    return str(value)


def markdown(card: dict[str, Any]) -> str:
    model, priv, ev = card["model"], card["privacy"], card["evaluation"]
    lines = [
        f"# Model card: {model['task']}",
        "",
        f"Exported {card['created']} from `{model['source']}`.",
        "",
        f"- labels: {', '.join(model['labels'])}",
        f"- modalities: {', '.join(model['modalities'])}",
        f"- training: {model['training']}; run {_value(model['run_id'])}; rounds {_value(model['rounds'])}"
        + (f"; epochs {model['epochs']}" if model["epochs"] is not None else ""),
        f"- sites: {', '.join(model['sites']) or '-'}",
        f"- secure aggregation: {_value(model['secure_aggregation'])}",
        f"- text preprocessing: {json.dumps(model['preprocessing'])}",
        "",
        "## Privacy",
        "",
        priv["summary"] + ".",
    ]
    if priv["sites"]:
        lines += ["", "| site | ε (PRV) | ε (RDP) | δ |", "|---|---|---|---|"]
        lines += [
            f"| {site} | {_value(e['epsilon_prv'])} | {_value(e['epsilon_rdp'])} | {_value(e['delta'])} |"
            for site, e in priv["sites"].items()
        ]
    if priv.get("note"):
        lines += ["", priv["note"]]
    where = (
        f"{ev['examples']} test records of {', '.join(ev['sites'])}"
        if ev
        else "no test records (--test-site not given)"
    )
    lines += ["", "## Exported variants", "", f"Accuracy on {where}.", ""]
    lines += ["| variant | file | bytes | × smaller | accuracy | Δ points |", "|---|---|---|---|---|---|"]
    for row in card["variants"]:
        delta = row["accuracy_delta"]
        lines.append(
            f"| {row['variant']} | {row['file']} | {row['bytes']} | {_value(row['size_ratio'])} | "
            f"{_value(row['accuracy'], pct=True)} | {'-' if delta is None else f'{delta:+.2f}'} |"
        )
    lines += ["", "## Export settings", "", "```json", json.dumps(card["export_settings"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def write_card(out: Path, card: dict[str, Any]) -> list[Path]:
    paths = [Path(out) / "model_card.json", Path(out) / "model_card.md"]
    write_atomic(paths[0], json.dumps(card, indent=2, default=str) + "\n")
    write_atomic(paths[1], markdown(card))
    return paths
