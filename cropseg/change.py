"""Change report: where the prediction contradicts the labels, as lost and new cropland.

The reference found that many of its "errors" were fields that had changed between the 2015 survey
and the 2017 imagery. This module turns that finding into a product:

- **per field**: the share of each ground-truth crop field that the prediction calls crop (on the
  field's interior, one pixel in from its edge, so that mixed edge pixels and small misregistration do
  not count);
- **lost cropland**: fields that the labels call crop but that are mostly predicted non-crop (share
  below ``max_share``, 0.5 by default);
- **new cropland**: compact regions predicted crop where the labels say non-crop: the median-blurred
  prediction, intersected with the label non-crop mask, opened (to drop slivers along field edges and
  roads), split into connected regions and kept when large (``min_area``) and compact (Polsby-Popper
  ``4 pi A / P^2`` of at least ``min_compactness``).

Each change carries a **confidence** in [0, 1] calibrated to the model and the scene: where its
predicted crop share ``s`` lies between the share the model gives the scene's label-crop land
(``c``) and the share it gives the label-non-crop land (``n``). Lost: ``(c - s) / (c - n)``; new:
``(s - n) / (c - n)``, clipped to [0, 1]. A lost field scores 1 when the model sees it as it sees the
scene's non-crop land, 0 when as it sees a typical crop field; a model that cannot tell crop from
non-crop (``c <= n``) gives 0 everywhere.

:func:`change_report` is pure (arrays, a :class:`~cropseg.grid.Grid` and GeoDataFrames in, a
:class:`ChangeReport` out); :func:`change_report_files` is the file edge behind ``cropseg change``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.features import rasterize, shapes
from scipy import ndimage

from cropseg import raster_io, vector_io
from cropseg.config import DWR_CROP_CLASSES
from cropseg.errors import InputError, InvalidRasterError, LabelError
from cropseg.grid import Grid
from cropseg.label import CROP, NODATA, NONCROP, aoi_mask, crop_polygons, rasterize_labels
from cropseg.polygonize import denoise, polygons_from_mask, traced_polygon
from cropseg.raster_io import atomic_path

LOST = "lost"
NEW = "new"
#: Columns of :attr:`ChangeReport.changes`, in order (besides geometry).
CHANGE_COLUMNS = (
    "id", "kind", "area_m2", "area_ha", "share_pred_crop", "confidence", "pixels", "field_id", "label_class",
)
#: Columns of :attr:`ChangeReport.fields`, in order (besides geometry).
FIELD_COLUMNS = ("field_id", "label_class", "area_m2", "area_ha", "pixels", "share_pred_crop", "status", "confidence")


@dataclass(frozen=True)
class ChangeReport:
    """The result of :func:`change_report`.

    Attributes:
        fields: every ground-truth crop field (grid CRS, largest first) with ``field_id`` (its input
            order), ``label_class``, ``area_m2``, ``area_ha``, ``pixels`` (interior pixels with a
            prediction), ``share_pred_crop`` (NaN when no pixel), ``status`` (``crop``, ``lost`` or
            ``no data``) and ``confidence`` (of loss).
        changes: lost fields and new regions (grid CRS), columns :data:`CHANGE_COLUMNS`, largest first.
        summary: counts, areas, the calibration shares ``c`` and ``n`` and the parameters used.
    """

    fields: gpd.GeoDataFrame
    changes: gpd.GeoDataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def _area_factor(grid: Grid) -> float:
    if not grid.crs.is_projected:
        raise InputError("the change report needs a prediction on a projected grid (metres); warp it to UTM first")
    unit = float(grid.crs.axis_info[0].unit_conversion_factor)
    return unit * unit


def field_crop_share(
    pred: np.ndarray, grid: Grid, fields: gpd.GeoDataFrame, edge_px: float = 1.0
) -> pd.DataFrame:
    """Per field, the number of interior pixels with a prediction and the share predicted crop.

    Args:
        pred: uint8 (rows, cols) prediction on ``grid`` (1 crop, 0 non-crop, 255 nodata).
        grid: the prediction grid.
        fields: polygons (any CRS), one row per field.
        edge_px: shrink each field by this many pixels before counting (0: whole field); a field
            that the shrinking empties is counted whole.

    Returns:
        DataFrame aligned with ``fields``: ``pixels``, ``crop_pixels``, ``share_pred_crop`` (NaN where
        no pixel).
    """
    geoms = fields.to_crs(grid.crs).geometry.to_numpy()
    if edge_px > 0:
        inner = shapely.buffer(geoms, -edge_px * max(grid.res))
        geoms = np.where(shapely.is_empty(inner) | (shapely.area(inner) == 0), geoms, inner)
    n = len(geoms)
    ids = np.zeros(grid.shape, dtype=np.int32)
    items = [(g, i + 1) for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    if items:
        rasterize(items, out=ids, transform=grid.transform)
    valid = pred != NODATA
    pixels = np.bincount(ids[valid], minlength=n + 1)[1:]
    crop = np.bincount(ids[valid & (pred == CROP)], minlength=n + 1)[1:]
    share = np.divide(crop, pixels, out=np.full(n, np.nan), where=pixels > 0)
    return pd.DataFrame({"pixels": pixels, "crop_pixels": crop, "share_pred_crop": share}, index=fields.index)


def _confidence(share: np.ndarray, c: float, n: float, kind: str) -> np.ndarray:
    if not c > n:
        return np.zeros_like(share, dtype=np.float64)
    score = (c - share) / (c - n) if kind == LOST else (share - n) / (c - n)
    return np.asarray(np.clip(np.nan_to_num(score, nan=0.0), 0.0, 1.0), dtype=np.float64)


def _new_regions(
    pred: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    median_size: int,
    opening_px: int,
    min_area: float,
    min_compactness: float,
) -> gpd.GeoDataFrame:
    cand = (denoise(pred, median_size) == CROP) & (labels == NONCROP)
    if opening_px > 0:
        r = opening_px
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        cand = ndimage.binary_opening(cand, structure=(xx * xx + yy * yy) <= r * r + r)
    regions, count = ndimage.label(cand)
    factor = _area_factor(grid)
    min_px = min_area / (factor * grid.res[0] * grid.res[1])
    columns = ["pixels", "share_pred_crop", "compactness"]
    if count == 0:
        return gpd.GeoDataFrame(pd.DataFrame(columns=columns), geometry=[], crs=grid.crs)
    px = np.bincount(regions.ravel(), minlength=count + 1)
    keep = px >= min_px
    keep[0] = False
    regions[~keep[regions]] = 0
    valid = pred != NODATA
    crop_px = np.bincount(regions[valid & (pred == CROP)], minlength=count + 1)
    valid_px = np.bincount(regions[valid], minlength=count + 1)
    rows = []
    geoms = []
    parts: dict[int, list[Any]] = {}
    for geom, value in shapes(regions, mask=regions > 0, transform=grid.transform, connectivity=4):
        parts.setdefault(int(value), []).append(traced_polygon(geom))
    for value, polys in parts.items():
        geom = shapely.union_all(polys) if len(polys) > 1 else polys[0]
        area = geom.area * factor
        perimeter = geom.length * math.sqrt(factor)
        compact = 4 * math.pi * area / (perimeter * perimeter) if perimeter else 0.0
        if compact < min_compactness:
            continue
        rows.append({"pixels": int(valid_px[value]), "share_pred_crop": crop_px[value] / max(valid_px[value], 1),
                     "compactness": compact})
        geoms.append(geom)
    return gpd.GeoDataFrame(pd.DataFrame(rows, columns=columns), geometry=geoms, crs=grid.crs)


def change_report(
    pred: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    fields: gpd.GeoDataFrame,
    *,
    class_field: str | None = None,
    max_share: float = 0.5,
    edge_px: float = 1.0,
    median_size: int = 5,
    opening_px: int = 2,
    min_area: float = 5000.0,
    min_compactness: float = 0.2,
) -> ChangeReport:
    """Compare a prediction with the labels: per-field crop share, lost cropland, new cropland.

    Args:
        pred: uint8 (rows, cols) prediction, 1 crop, 0 non-crop, 255 nodata.
        labels: uint8 (rows, cols) label mask on the same grid (the rasterized ``fields`` plus the
            non-crop land of the AOI; 255 outside it).
        grid: the grid of both.
        fields: the ground-truth crop fields (any CRS).
        class_field: attribute of ``fields`` holding the class code, copied as ``label_class``.
        max_share: a crop field whose predicted crop share is below this is lost cropland.
        edge_px: pixels left out along each field's edge when computing its share.
        median_size: median blur of the prediction before looking for new cropland (odd, 1 = off).
        opening_px: radius in pixels of the morphological opening of new-cropland candidates (0 = off).
        min_area: smallest change reported, in square metres (lost fields and new regions alike).
        min_compactness: least Polsby-Popper compactness of a new region (thin strips score near 0).

    Returns:
        The :class:`ChangeReport`.
    """
    if pred.shape != labels.shape or pred.shape != grid.shape:
        raise InputError(f"prediction {pred.shape}, labels {labels.shape} and grid {grid.shape} must match")
    if not 0 < max_share <= 1:
        raise InputError(f"max_share must lie in (0, 1], got {max_share}")
    factor = _area_factor(grid)
    both = (pred != NODATA) & (labels != NODATA)
    if not both.any():
        raise LabelError("no pixel is valid in both the prediction and the labels; check that they overlap")
    lab_crop = both & (labels == CROP)
    lab_non = both & (labels == NONCROP)
    c = float((pred[lab_crop] == CROP).mean()) if lab_crop.any() else float("nan")
    n = float((pred[lab_non] == CROP).mean()) if lab_non.any() else float("nan")

    f = fields.to_crs(grid.crs).reset_index(drop=True)
    stats = field_crop_share(pred, grid, f, edge_px=edge_px)
    area = f.geometry.area.to_numpy() * factor
    share = stats["share_pred_crop"].to_numpy()
    status = np.where(np.isnan(share), "no data", np.where(share < max_share, LOST, "crop"))
    conf = _confidence(share, c, n, LOST)
    classes = f[class_field].astype(str).to_numpy() if class_field and class_field in f.columns else [None] * len(f)
    fields_out = gpd.GeoDataFrame(
        {
            "field_id": np.arange(1, len(f) + 1),
            "label_class": classes,
            "area_m2": np.round(area, 1),
            "area_ha": np.round(area / 10_000, 4),
            "pixels": stats["pixels"].to_numpy(),
            "share_pred_crop": np.round(share, 4),
            "status": status,
            "confidence": np.round(np.where(np.isnan(share), 0.0, conf), 3),
        },
        geometry=f.geometry.to_numpy(),
        crs=grid.crs,
    )

    fields_out = fields_out.sort_values("area_m2", ascending=False, kind="stable").reset_index(drop=True)
    lost = fields_out[(fields_out["status"] == LOST) & (fields_out["area_m2"] >= min_area)]
    new = _new_regions(pred, labels, grid, median_size, opening_px, min_area, min_compactness)
    new_area = new.geometry.area.to_numpy() * factor
    new_share = new["share_pred_crop"].to_numpy(dtype=np.float64)
    lost_part = pd.DataFrame(
        {
            "kind": LOST,
            "area_m2": lost["area_m2"].to_numpy(),
            "share_pred_crop": lost["share_pred_crop"].to_numpy(),
            "confidence": lost["confidence"].to_numpy(),
            "pixels": lost["pixels"].to_numpy(),
            "field_id": lost["field_id"].to_numpy(),
            "label_class": lost["label_class"].to_numpy(),
        }
    )
    new_part = pd.DataFrame(
        {
            "kind": NEW,
            "area_m2": np.round(new_area, 1),
            "share_pred_crop": np.round(new_share, 4),
            "confidence": np.round(_confidence(new_share, c, n, NEW), 3),
            "pixels": new["pixels"].to_numpy(dtype=np.int64),
            "field_id": pd.array([pd.NA] * len(new), dtype="Int64"),
            "label_class": [None] * len(new),
        }
    )
    table = pd.concat([lost_part.astype({"field_id": "Int64"}), new_part], ignore_index=True)
    geoms = np.concatenate([lost.geometry.to_numpy(), new.geometry.to_numpy()])
    changes = gpd.GeoDataFrame(table, geometry=geoms, crs=grid.crs)
    changes["area_ha"] = (changes["area_m2"] / 10_000).round(4)
    changes = changes.sort_values(["area_m2", "kind"], ascending=[False, True], kind="stable").reset_index(drop=True)
    changes["id"] = np.arange(1, len(changes) + 1)
    changes = gpd.GeoDataFrame(changes[[*CHANGE_COLUMNS, "geometry"]], geometry="geometry", crs=grid.crs)

    is_lost = changes["kind"] == LOST
    summary = {
        "fields": len(fields_out),
        "fields_with_data": int((fields_out["status"] != "no data").sum()),
        "lost": int(is_lost.sum()),
        "lost_ha": round(float(changes.loc[is_lost, "area_ha"].sum()), 4),
        "new": int((~is_lost).sum()),
        "new_ha": round(float(changes.loc[~is_lost, "area_ha"].sum()), 4),
        "calibration": {
            "share_pred_crop_on_label_crop": round(c, 4),
            "share_pred_crop_on_label_noncrop": round(n, 4),
        },
        "params": {
            "max_share": max_share, "edge_px": edge_px, "median_size": median_size, "opening_px": opening_px,
            "min_area": min_area, "min_compactness": min_compactness,
        },
    }
    return ChangeReport(fields=fields_out, changes=changes, summary=summary)


def change_raster(changes: gpd.GeoDataFrame, grid: Grid) -> np.ndarray:
    """Rasterize changes onto ``grid``: uint8 0 no change, 1 lost cropland, 2 new cropland."""
    out = np.zeros(grid.shape, dtype=np.uint8)
    if len(changes):
        g = changes.to_crs(grid.crs)
        items = [(geom, 1 if kind == LOST else 2) for geom, kind in zip(g.geometry, g["kind"], strict=True)]
        rasterize(items, out=out, transform=grid.transform)
    return out


def format_change_summary(summary: dict[str, Any], changes: gpd.GeoDataFrame | None = None, top: int = 10) -> str:
    """Plain-text summary of a change report (and its ``top`` largest changes)."""
    cal = summary["calibration"]
    lines = [
        f"fields: {summary['fields']} ({summary['fields_with_data']} with prediction)",
        f"lost cropland: {summary['lost']} fields, {summary['lost_ha']:.1f} ha",
        f"new cropland:  {summary['new']} regions, {summary['new_ha']:.1f} ha",
        f"model calibration: predicted crop on label crop {cal['share_pred_crop_on_label_crop']:.3f}, "
        f"on label non-crop {cal['share_pred_crop_on_label_noncrop']:.3f}",
    ]
    if changes is not None and len(changes):
        lines += ["", f"{'id':>4} {'kind':<5} {'area ha':>9} {'share crop':>11} {'confidence':>11}"]
        for row in changes.head(top).itertuples():
            lines.append(f"{row.id:>4} {row.kind:<5} {row.area_ha:>9.2f} {row.share_pred_crop:>11.3f} "
                         f"{row.confidence:>11.3f}")
    return "\n".join(lines)


def read_mask(path: str | Path, what: str = "prediction", grid: Grid | None = None) -> tuple[np.ndarray, Grid]:
    """Read a 1-band uint8 mask (1, 0, 255) on its own grid, or resampled (nearest) onto ``grid``.

    Nodata stays 255 (values outside 1 / 0 / 255 are refused).
    """
    info = raster_io.read_info(path, what)
    if info.count != 1:
        raise InvalidRasterError(f"{what} {path} has {info.count} bands; give a 1-band mask (1, 0, 255)")
    target = grid or info.grid
    arr = raster_io.reproject_to_grid(path, target, nodata=NODATA, what=what).astype(np.uint8)
    if not set(np.unique(arr).tolist()) <= {CROP, NONCROP, NODATA}:
        raise InvalidRasterError(f"{what} {path} holds values other than 1, 0 and 255; give a cropseg mask GeoTIFF")
    return arr, target


def load_fields(
    labels: str | Path,
    grid: Grid,
    *,
    aoi: str | Path | None = None,
    label_field: str | None = "CLASS1",
    crop_classes: Sequence[str] = DWR_CROP_CLASSES,
) -> tuple[gpd.GeoDataFrame, np.ndarray, str | None]:
    """The crop fields, the label mask on ``grid`` and the class attribute, from a vector or raster.

    From a label raster the fields are its crop regions (adjacent fields then merge into one).
    """
    aoi_gdf = vector_io.read_vector(aoi, "AOI") if aoi is not None else None
    if vector_io.is_raster_path(labels):
        mask, _ = read_mask(labels, "label raster", grid)
        if aoi_gdf is not None:
            mask[~aoi_mask(aoi_gdf, grid)] = NODATA
        fields = polygons_from_mask(mask, grid, simplify=0.0, min_area=0.0)[["geometry"]]
        return fields, mask, None
    truth = vector_io.read_vector(labels, "ground truth")
    mask = rasterize_labels(truth, grid, field=label_field, crop_classes=crop_classes, aoi=aoi_gdf)
    fields = crop_polygons(truth, label_field, crop_classes).to_crs(grid.crs)
    if aoi_gdf is not None:
        fields = gpd.clip(fields, aoi_gdf.to_crs(grid.crs))
        fields = fields[fields.geometry.geom_type.isin(["Polygon", "MultiPolygon"]) & ~fields.geometry.is_empty]
    return fields.reset_index(drop=True), mask, label_field


def change_report_files(
    pred: str | Path,
    labels: str | Path,
    out_dir: str | Path,
    *,
    aoi: str | Path | None = None,
    label_field: str | None = "CLASS1",
    crop_classes: Sequence[str] = DWR_CROP_CLASSES,
    max_share: float = 0.5,
    edge_px: float = 1.0,
    median_size: int = 5,
    opening_px: int = 2,
    min_area: float = 5000.0,
    min_compactness: float = 0.2,
) -> ChangeReport:
    """File edge of ``cropseg change``: write the change report of a prediction against labels.

    Writes into ``out_dir``: ``changes.geojson`` (RFC 7946, EPSG:4326) and ``changes.csv`` (lost and
    new cropland, largest first, with the centroid's lon / lat), ``field_shares.geojson`` and
    ``field_shares.csv`` (every crop field), ``change.gpkg`` (layers ``changes`` and ``field_shares``
    in the prediction CRS) and ``change_summary.json``.

    Args:
        pred: prediction GeoTIFF (1 crop, 0 non-crop, 255 nodata).
        labels: ground-truth polygons (any vector format) or a label raster on any grid.
        out_dir: output folder.
        aoi: optional AOI; outside it the labels are nodata and fields are clipped.
        label_field: class attribute of the polygons (None: every polygon is crop).
        crop_classes: values of ``label_field`` that are crop.
        max_share: see :func:`change_report`.
        edge_px: see :func:`change_report`.
        median_size: see :func:`change_report`.
        opening_px: see :func:`change_report`.
        min_area: see :func:`change_report`.
        min_compactness: see :func:`change_report`.
    """
    pred_arr, grid = read_mask(pred, "prediction")
    fields, mask, class_field = load_fields(
        labels, grid, aoi=aoi, label_field=label_field, crop_classes=crop_classes
    )
    report = change_report(
        pred_arr, mask, grid, fields, class_field=class_field, max_share=max_share, edge_px=edge_px,
        median_size=median_size, opening_px=opening_px, min_area=min_area, min_compactness=min_compactness,
    )
    report.summary["inputs"] = {"pred": str(pred), "labels": str(labels), "aoi": str(aoi) if aoi else None}
    write_change_report(report, out_dir)
    return report


def _csv(gdf: gpd.GeoDataFrame, path: Path) -> None:
    table = pd.DataFrame(gdf.drop(columns="geometry"))
    if len(gdf):
        centre = gdf.geometry.representative_point().to_crs("EPSG:4326")
        table["lon"] = centre.x.round(6).to_numpy()
        table["lat"] = centre.y.round(6).to_numpy()
    else:
        table["lon"] = pd.Series(dtype=float)
        table["lat"] = pd.Series(dtype=float)
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)


def write_change_report(report: ChangeReport, out_dir: str | Path) -> dict[str, Path]:
    """Write a :class:`ChangeReport` (see :func:`change_report_files` for the files); return name -> path."""
    out = Path(out_dir)
    paths = {
        "changes": vector_io.write_geojson(report.changes, out / "changes.geojson"),
        "field_shares": vector_io.write_geojson(report.fields, out / "field_shares.geojson"),
    }
    gpkg = out / "change.gpkg"
    with atomic_path(gpkg, suffix=".gpkg") as tmp:
        vector_io.write_gpkg(report.changes, tmp, layer="changes")
        import pyogrio

        pyogrio.write_dataframe(report.fields, tmp, driver="GPKG", layer="field_shares", append=True)
    paths["gpkg"] = gpkg
    _csv(report.changes, out / "changes.csv")
    _csv(report.fields, out / "field_shares.csv")
    paths["changes_csv"] = out / "changes.csv"
    paths["field_shares_csv"] = out / "field_shares.csv"
    with atomic_path(out / "change_summary.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(report.summary, indent=2, default=str) + "\n")
    paths["summary"] = out / "change_summary.json"
    return paths
