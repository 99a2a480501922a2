"""Evaluation: pixel metrics of a prediction against ground truth.

Pure on arrays: :func:`pixel_metrics` gives the reference's classification report (precision,
recall, F1 and support per class, accuracy, macro and weighted averages), the crop IoU and the
confusion matrix. :func:`evaluate_files` is the file edge used by the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from cropseg import raster_io
from cropseg.errors import InvalidRasterError, LabelError
from cropseg.label import CROP, NODATA, NONCROP, load_labels

CLASS_NAMES = ("crop", "non-crop")


def pixel_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Pixel metrics over pixels valid in both arrays (values 1 crop, 0 non-crop, 255 nodata).

    Returns:
        dict with ``report`` (sklearn classification_report as a dict, classes named crop / non-crop),
        ``crop_iou``, ``confusion`` (rows truth, columns prediction, order crop, non-crop) and ``pixels``.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    both = (pred != NODATA) & (truth != NODATA)
    if not both.any():
        raise LabelError("no pixel is valid in both the prediction and the ground truth; check that they overlap")
    p, t = pred[both], truth[both]
    report = classification_report(
        t, p, labels=[CROP, NONCROP], target_names=list(CLASS_NAMES), output_dict=True, zero_division=0
    )
    inter = int(((p == CROP) & (t == CROP)).sum())
    union = int(((p == CROP) | (t == CROP)).sum())
    cm = confusion_matrix(t, p, labels=[CROP, NONCROP])
    return {
        "report": report,
        "crop_iou": inter / union if union else 0.0,
        "confusion": {"labels": list(CLASS_NAMES), "matrix": cm.tolist(), "rows": "truth", "columns": "prediction"},
        "pixels": int(both.sum()),
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """Plain-text classification report, IoU and confusion matrix."""
    rep = metrics["report"]
    lines = [f"{'':>14}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}", ""]
    for name in CLASS_NAMES:
        r = rep[name]
        lines.append(f"{name:>14}{r['precision']:>10.3f}{r['recall']:>10.3f}{r['f1-score']:>10.3f}{r['support']:>10.0f}")
    lines.append("")
    support = sum(rep[n]["support"] for n in CLASS_NAMES)
    lines.append(f"{'accuracy':>14}{'':>10}{'':>10}{rep['accuracy']:>10.3f}{support:>10.0f}")
    for avg in ("macro avg", "weighted avg"):
        r = rep[avg]
        lines.append(f"{avg:>14}{r['precision']:>10.3f}{r['recall']:>10.3f}{r['f1-score']:>10.3f}{r['support']:>10.0f}")
    cm = metrics["confusion"]["matrix"]
    lines += [
        "",
        f"crop IoU: {metrics['crop_iou']:.3f}",
        "",
        "confusion matrix (rows: truth, columns: prediction)",
        f"{'':>14}{'crop':>12}{'non-crop':>12}",
        f"{'crop':>14}{cm[0][0]:>12}{cm[0][1]:>12}",
        f"{'non-crop':>14}{cm[1][0]:>12}{cm[1][1]:>12}",
    ]
    return "\n".join(lines)


def evaluate_files(
    pred: str | Path,
    labels: str | Path,
    *,
    aoi: str | Path | None = None,
    label_field: str | None = "CLASS1",
    crop_classes: Sequence[str] = ("G", "R", "F", "P", "T", "D", "C", "V"),
) -> dict[str, Any]:
    """File edge: score a prediction GeoTIFF against labels (vector or raster, any grid)."""
    info = raster_io.read_info(pred, "prediction")
    if info.count != 1:
        raise InvalidRasterError(f"prediction {pred} has {info.count} bands; give a cropseg prediction (1 band)")
    pred_arr = raster_io.read(pred)[0]
    values = np.unique(pred_arr)
    if not set(values.tolist()) <= {CROP, NONCROP, NODATA}:
        raise InvalidRasterError(
            f"prediction {pred} holds values other than 1, 0 and 255; give a cropseg prediction GeoTIFF"
        )
    truth = load_labels(labels, info.grid, aoi, label_field, crop_classes)
    metrics = pixel_metrics(pred_arr, truth)
    metrics["inputs"] = {"pred": str(pred), "labels": str(labels), "aoi": str(aoi) if aoi else None}
    return metrics
