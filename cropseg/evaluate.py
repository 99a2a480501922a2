"""Evaluation: pixel metrics of a prediction against ground truth.

Pure on arrays: :func:`pixel_metrics` gives the reference's classification report (precision,
recall, F1 and support per class, accuracy, macro and weighted averages), the crop IoU and the
confusion matrix. :func:`bootstrap_ci` adds confidence intervals by a spatial block bootstrap
(:func:`bootstrap_compare` compares two predictions on the same resampled tiles), and
:func:`object_metrics` scores field polygons object by object (IoU matching, over- and
under-segmentation). :func:`evaluate_files` is the file edge used by the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from sklearn.metrics import classification_report, confusion_matrix

from cropseg import raster_io, vector_io
from cropseg.errors import InputError, InvalidRasterError, LabelError
from cropseg.label import CROP, NODATA, NONCROP, crop_polygons, load_labels

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
    ci: bool = False,
    ci_block: int = 64,
    polygons: str | Path | None = None,
    iou: float = 0.5,
) -> dict[str, Any]:
    """File edge: score a prediction GeoTIFF against labels (vector or raster, any grid).

    With ``ci``, adds ``bootstrap`` (spatial block bootstrap intervals, :func:`bootstrap_ci`). With
    ``polygons`` (the prediction's field polygons) and vector labels, adds ``objects`` (field-level
    matching of the polygons to the crop fields of the labels, :func:`object_metrics`).
    """
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
    if ci:
        metrics["bootstrap"] = bootstrap_ci(pred_arr, truth, block=ci_block)
    if polygons is not None:
        if vector_io.is_raster_path(labels):
            raise InputError("field-level metrics (--polygons) need vector labels (field polygons), not a raster")
        fields = crop_polygons(vector_io.read_vector(labels, "ground truth"), label_field, crop_classes)
        if aoi is not None:
            fields = fields.clip(vector_io.read_vector(aoi, "AOI").to_crs(fields.crs))
        metrics["objects"] = object_metrics(vector_io.read_vector(polygons, "polygons"), fields, iou=iou)
        metrics["inputs"]["polygons"] = str(polygons)
    return metrics


# -- confidence intervals: spatial block bootstrap ---------------------------------------------------

#: Metrics that :func:`bootstrap_ci` reports, all computed from crop-vs-non-crop pixel counts.
BOOTSTRAP_METRICS = ("crop_f1", "crop_iou", "f1_weighted", "accuracy")


def _block_counts(pred: np.ndarray, truth: np.ndarray, block: int) -> np.ndarray:
    """Confusion counts (tp, fp, fn, tn) of crop per ``block`` x ``block`` tile: int64 (tiles, 4).

    Tiles without any valid pixel are dropped.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if block < 1:
        raise ValueError(f"block must be a positive number of pixels, got {block}")
    both = (pred != NODATA) & (truth != NODATA)
    if not both.any():
        raise LabelError("no pixel is valid in both the prediction and the ground truth; check that they overlap")
    rows, cols = pred.shape
    tile = (np.arange(rows)[:, None] // block) * (-(-cols // block)) + (np.arange(cols)[None, :] // block)
    p, t, ids = pred[both] == CROP, truth[both] == CROP, tile[both]
    n_tiles = int(tile.max()) + 1
    counts = np.stack(
        [
            np.bincount(ids[p & t], minlength=n_tiles),
            np.bincount(ids[p & ~t], minlength=n_tiles),
            np.bincount(ids[~p & t], minlength=n_tiles),
            np.bincount(ids[~p & ~t], minlength=n_tiles),
        ],
        axis=1,
    ).astype(np.int64)
    return np.asarray(counts[counts.sum(axis=1) > 0])


def _scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from (..., 4) tp, fp, fn, tn counts; 0 where undefined (as sklearn's zero_division=0)."""
    tp, fp, fn, tn = (counts[..., i].astype(np.float64) for i in range(4))
    total = tp + fp + fn + tn

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.asarray(np.divide(num, den, out=np.zeros_like(num), where=den > 0))

    f1_crop = ratio(2 * tp, 2 * tp + fp + fn)
    f1_non = ratio(2 * tn, 2 * tn + fp + fn)
    return {
        "crop_f1": f1_crop,
        "crop_iou": ratio(tp, tp + fp + fn),
        "f1_weighted": ratio((tp + fn) * f1_crop + (tn + fp) * f1_non, total),
        "accuracy": ratio(tp + tn, total),
    }


def _resample(n_tiles: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_tiles, size=(n, n_tiles))


def bootstrap_ci(
    pred: np.ndarray,
    truth: np.ndarray,
    block: int = 64,
    n: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Confidence intervals of crop F1, crop IoU, weighted F1 and accuracy by a spatial block bootstrap.

    Neighbouring pixels are not independent (a misclassified field is thousands of wrong pixels), so
    resampling pixels would give intervals far too narrow. The grid is cut into ``block`` x ``block``
    tiles; each of ``n`` replicates draws as many tiles as there are (with replacement) and recomputes
    the metrics from their pooled confusion counts. The interval is the percentile interval.

    Args:
        pred: uint8 (rows, cols) prediction, 1 crop, 0 non-crop, 255 nodata.
        truth: uint8 (rows, cols) ground truth, same coding and shape.
        block: tile size in pixels; choose it larger than a field (64 px = 192 m at 3 m).
        n: number of bootstrap replicates.
        seed: random seed of the resampling (same seed, same intervals).
        level: confidence level of the intervals.

    Returns:
        dict with ``block``, ``n``, ``level``, ``seed``, ``tiles`` (tiles holding valid pixels) and
        ``metrics``: for each of :data:`BOOTSTRAP_METRICS`, ``value`` (on all pixels), ``low``, ``high``
        and ``std`` (standard error over the replicates).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    if n < 1:
        raise ValueError(f"n must be a positive number of replicates, got {n}")
    counts = _block_counts(pred, truth, block)
    point = _scores(counts.sum(axis=0))
    reps = _scores(counts[_resample(len(counts), n, seed)].sum(axis=1))
    alpha = (1 - level) / 2
    metrics = {
        name: {
            "value": float(point[name]),
            "low": float(np.quantile(reps[name], alpha)),
            "high": float(np.quantile(reps[name], 1 - alpha)),
            "std": float(reps[name].std(ddof=1)) if n > 1 else 0.0,
        }
        for name in BOOTSTRAP_METRICS
    }
    return {"block": block, "n": n, "level": level, "seed": seed, "tiles": len(counts), "metrics": metrics}


def bootstrap_compare(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    truth: np.ndarray,
    block: int = 64,
    n: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Paired block bootstrap of the difference between two predictions of the same truth (A minus B).

    Both predictions are scored on the same resampled tiles, so the spatial variation that they share
    cancels out; a difference whose interval excludes 0 is one that the test area supports. Only pixels
    valid in both predictions and the truth count.

    Returns:
        dict with ``block``, ``n``, ``level``, ``seed``, ``tiles`` and ``metrics``: for each of
        :data:`BOOTSTRAP_METRICS`, ``a``, ``b``, ``diff`` (a - b on all pixels), ``low`` and ``high``
        (interval of the difference) and ``p_a_better`` (share of replicates where A scores higher).
    """
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"predictions differ in shape: {pred_a.shape} and {pred_b.shape}")
    common = (pred_a != NODATA) & (pred_b != NODATA)
    truth_c = np.where(common, truth, NODATA).astype(np.uint8)
    ca = _block_counts(pred_a, truth_c, block)
    cb = _block_counts(pred_b, truth_c, block)
    # the same tiles hold data in both (same validity), so rows line up
    idx = _resample(len(ca), n, seed)
    pa, pb = _scores(ca.sum(axis=0)), _scores(cb.sum(axis=0))
    ra, rb = _scores(ca[idx].sum(axis=1)), _scores(cb[idx].sum(axis=1))
    alpha = (1 - level) / 2
    metrics = {}
    for name in BOOTSTRAP_METRICS:
        diff = ra[name] - rb[name]
        metrics[name] = {
            "a": float(pa[name]),
            "b": float(pb[name]),
            "diff": float(pa[name] - pb[name]),
            "low": float(np.quantile(diff, alpha)),
            "high": float(np.quantile(diff, 1 - alpha)),
            "p_a_better": float((diff > 0).mean()),
        }
    return {"block": block, "n": n, "level": level, "seed": seed, "tiles": len(ca), "metrics": metrics}


def format_bootstrap(ci: dict[str, Any]) -> str:
    """Plain-text table of :func:`bootstrap_ci`'s intervals."""
    pct = round(ci["level"] * 100)
    lines = [f"{'':>14}{'value':>10}{f'{pct}% CI':>20}   (block bootstrap, {ci['block']} px tiles, n={ci['n']})"]
    for name, m in ci["metrics"].items():
        lines.append(f"{name:>14}{m['value']:>10.3f}{m['low']:>11.3f} - {m['high']:.3f}")
    return "\n".join(lines)


# -- object (field) metrics -------------------------------------------------------------------------


def _polygons_only(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    keep = gdf.geometry.notna() & ~gdf.geometry.is_empty & gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    return gdf[keep].reset_index(drop=True)


def object_metrics(
    pred_polys: gpd.GeoDataFrame,
    truth_polys: gpd.GeoDataFrame,
    iou: float = 0.5,
    part: float = 0.5,
    min_cover: float = 0.1,
) -> dict[str, Any]:
    """Field-level scores: match predicted polygons to ground-truth fields one to one by IoU.

    A predicted polygon and a field match when their intersection over union is at least ``iou``
    (greedy by decreasing IoU, so each polygon and each field is used once; with ``iou`` >= 0.5 the
    matching is unique anyway). Precision is matched / predicted polygons, recall matched / fields.

    Segmentation errors are counted beside:

    - **over-segmentation** (a field split): a field holding at least two predicted polygons that lie
      mostly (``part`` of their area) inside it and each cover at least ``min_cover`` of it;
    - **under-segmentation** (fields merged): a predicted polygon that covers at least ``part`` of
      each of two or more fields.

    Args:
        pred_polys: predicted field polygons (any CRS).
        truth_polys: ground-truth field polygons (any CRS; only the ones to score, e.g. crop fields).
        iou: IoU threshold of a match.
        part: share of a polygon's area that must fall inside the other for a split / merge.
        min_cover: least share of a field that a piece must cover to count as a split part.

    Returns:
        dict with ``iou_threshold``, ``n_pred``, ``n_truth``, ``matched``, ``precision``, ``recall``,
        ``f1``, ``mean_matched_iou``, ``over_segmented`` (fields split), ``split_parts`` (polygons in
        those splits), ``under_segmented`` (polygons merging fields), ``merged_fields`` (fields in those
        merges) and ``matches`` (list of ``{"pred", "truth", "iou"}`` row positions).
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou threshold must lie in (0, 1], got {iou}")
    truth = _polygons_only(truth_polys)
    pred = _polygons_only(pred_polys)
    if truth.crs is None or pred.crs is None:
        raise LabelError("object metrics need polygons with a CRS on both sides")
    crs = truth.crs if truth.crs.is_projected else truth.estimate_utm_crs()
    truth, pred = truth.to_crs(crs), pred.to_crs(crs)
    n_pred, n_truth = len(pred), len(truth)
    out: dict[str, Any] = {"iou_threshold": iou, "n_pred": n_pred, "n_truth": n_truth}
    if n_pred and n_truth:
        ip, it = truth.sindex.query(pred.geometry, predicate="intersects")
    else:
        ip = it = np.zeros(0, dtype=np.int64)
    a_pred = pred.geometry.area.to_numpy()
    a_truth = truth.geometry.area.to_numpy()
    inter = np.asarray(
        shapely.area(shapely.intersection(pred.geometry.to_numpy()[ip], truth.geometry.to_numpy()[it])),
        dtype=np.float64,
    )
    union = a_pred[ip] + a_truth[it] - inter
    pair_iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    matches: list[dict[str, Any]] = []
    used_p: set[int] = set()
    used_t: set[int] = set()
    for k in np.argsort(-pair_iou, kind="stable"):
        if pair_iou[k] < iou:
            break
        p, t = int(ip[k]), int(it[k])
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        matches.append({"pred": p, "truth": t, "iou": round(float(pair_iou[k]), 4)})
    matched = len(matches)
    precision = matched / n_pred if n_pred else 0.0
    recall = matched / n_truth if n_truth else 0.0

    frac_of_pred = np.divide(inter, a_pred[ip], out=np.zeros_like(inter), where=a_pred[ip] > 0)
    frac_of_truth = np.divide(inter, a_truth[it], out=np.zeros_like(inter), where=a_truth[it] > 0)
    pieces = (frac_of_pred >= part) & (frac_of_truth >= min_cover)
    parts_per_field = np.bincount(it[pieces], minlength=n_truth) if n_truth else np.zeros(0, np.int64)
    covered = frac_of_truth >= part
    fields_per_pred = np.bincount(ip[covered], minlength=n_pred) if n_pred else np.zeros(0, np.int64)
    split = parts_per_field >= 2
    merged = fields_per_pred >= 2
    out.update(
        matched=matched,
        precision=precision,
        recall=recall,
        f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        mean_matched_iou=float(np.mean([m["iou"] for m in matches])) if matches else 0.0,
        over_segmented=int(split.sum()),
        split_parts=int(parts_per_field[split].sum()),
        under_segmented=int(merged.sum()),
        merged_fields=int(fields_per_pred[merged].sum()),
        matches=matches,
    )
    return out


def format_object_metrics(m: dict[str, Any]) -> str:
    """Plain-text summary of :func:`object_metrics`."""
    return "\n".join(
        [
            f"fields (truth) {m['n_truth']}, polygons (predicted) {m['n_pred']}, matched at IoU >= "
            f"{m['iou_threshold']:g}: {m['matched']} (mean IoU {m['mean_matched_iou']:.3f})",
            f"object precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}",
            f"over-segmented fields (split): {m['over_segmented']} into {m['split_parts']} polygons; "
            f"under-segmented polygons (merged): {m['under_segmented']} holding {m['merged_fields']} fields",
        ]
    )
