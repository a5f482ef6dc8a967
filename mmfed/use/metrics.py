"""Classification metrics from class probabilities: accuracy, loss, the confusion matrix, per-class
precision / recall / F1 with support, and calibration (expected calibration error over equal-width
confidence bins, and the bins a reliability plot draws).

Conventions (stated in every report): the confusion matrix has the true class in rows and the predicted
one in columns; a precision with no prediction of the class, or a recall with no record of it, is
undefined (null); F1 is 2TP / (2TP + FP + FN), undefined only for a class neither present nor predicted;
macro averages are over the classes where the metric is defined. The prediction is the most probable
class (ties: the first), its confidence that probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CALIBRATION_BINS = 15


def confusion(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """[classes, classes] counts: row = true class, column = predicted class."""
    out = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(out, (labels.astype(np.int64), preds.astype(np.int64)), 1)
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def per_class(matrix: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class, read off the confusion matrix."""
    out = []
    for k, name in enumerate(names):
        tp = int(matrix[k, k])
        predicted, support = int(matrix[:, k].sum()), int(matrix[k, :].sum())
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = _ratio(2 * tp, predicted + support)  # 2TP / (2TP + FP + FN)
        out.append(
            {
                "label": name,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "support": support,
                "predicted": predicted,
            }
        )
    return out


def _macro(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """ECE over `bins` equal-width bins of confidence ((0, 1/bins], ..., confidence 0 in the first):
    the count-weighted mean of |accuracy - mean confidence| per bin; and every bin's numbers."""
    n = len(labels)
    confidence = probs.max(axis=1) if n else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if n else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        conf = float(confidence[inside].mean()) if count else None
        acc = float(correct[inside].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": conf, "accuracy": acc})  # fmt: skip
    return {"bins": bins, "binning": "equal-width", "ece": float(ece) if n else None, "table": rows}


def classification(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Every metric of one set of records (see the module's conventions)."""
    n = len(labels)
    preds = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    matrix = confusion(labels, preds, len(names))
    rows = per_class(matrix, names)
    picked = probs[np.arange(n), labels] if n else np.zeros(0)
    return {
        "examples": n,
        "accuracy": float((preds == labels).mean()) if n else None,
        "loss": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if n else None,
        "macro_precision": _macro(rows, "precision"),
        "macro_recall": _macro(rows, "recall"),
        "macro_f1": _macro(rows, "f1"),
        "per_class": rows,
        "confusion": matrix.tolist(),
        "calibration": calibration(probs, labels),
    }


def ablation(
    probs: np.ndarray,
    masked: dict[str, np.ndarray],
    labels: np.ndarray,
    presence: np.ndarray,
    modalities: Sequence[str],
) -> list[dict[str, Any]]:
    """Accuracy with each modality masked in turn, against the unmasked accuracy: over all records, and
    over the records that hold the modality (the only ones masking it can change)."""
    base = probs.argmax(axis=1) == labels if len(labels) else np.zeros(0, bool)
    out = []
    for modality, mprobs in masked.items():
        right = mprobs.argmax(axis=1) == labels if len(labels) else np.zeros(0, bool)
        holds = presence[:, list(modalities).index(modality)] if len(labels) else np.zeros(0, bool)
        out.append(
            {
                "masked": modality,
                "accuracy": float(right.mean()) if len(right) else None,
                "change": float(right.mean() - base.mean()) if len(right) else None,
                "records_with_modality": int(holds.sum()),
                "accuracy_on_those": float(right[holds].mean()) if holds.any() else None,
                "unmasked_accuracy_on_those": float(base[holds].mean()) if holds.any() else None,
            }
        )
    return out
