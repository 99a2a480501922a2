"""Ground truth: field polygons (or a label raster) to a crop / non-crop pixel mask on a grid.

Label values everywhere in cropseg: ``1`` crop, ``0`` non-crop, ``255`` nodata.
Crop is every pixel inside a polygon whose class attribute is one of the crop classes; non-crop
is every other pixel inside the AOI (or the whole grid when no AOI is given); nodata is outside
the AOI and wherever the image is invalid. Polygon holes and MultiPolygons are honoured, because
rasterio rasterizes the geometries themselves (not their exterior rings).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
from rasterio.features import geometry_mask, rasterize
from shapely.geometry import box

from cropseg import raster_io, vector_io
from cropseg.errors import LabelError, NoOverlapError
from cropseg.grid import Grid

CROP = 1
NONCROP = 0
NODATA = 255


def crop_polygons(
    gdf: gpd.GeoDataFrame, field: str | None, crop_classes: Sequence[str]
) -> gpd.GeoDataFrame:
    """The polygons that count as crop.

    Args:
        gdf: ground-truth features.
        field: attribute holding the class code; ``None`` means every feature is crop.
        crop_classes: codes of that attribute that are crop (compared as strings).
    """
    if field is None:
        return gdf
    if field not in gdf.columns:
        attrs = ", ".join(c for c in gdf.columns if c != "geometry") or "none"
        raise LabelError(
            f"ground truth has no attribute {field!r} (attributes: {attrs}); "
            "choose one with --label-field, or --label-field '' to treat every polygon as crop"
        )
    wanted = {str(c) for c in crop_classes}
    return gdf[gdf[field].astype(str).isin(wanted)]


def _polygonal(gdf: gpd.GeoDataFrame) -> list[object]:
    geoms = gdf.geometry
    return [g for g in geoms if g is not None and not g.is_empty and g.geom_type in ("Polygon", "MultiPolygon")]


def aoi_mask(aoi: gpd.GeoDataFrame, grid: Grid) -> np.ndarray:
    """Boolean (rows, cols): True for pixels whose centre lies inside the AOI."""
    shapes = _polygonal(aoi.to_crs(grid.crs))
    if not shapes:
        raise LabelError("the AOI holds no polygon; give a Polygon or MultiPolygon AOI")
    inside = ~geometry_mask(shapes, out_shape=grid.shape, transform=grid.transform)
    if not inside.any():
        raise NoOverlapError(
            "the AOI does not overlap the image; check that both cover the same place (and their CRS)"
        )
    return np.asarray(inside, dtype=bool)


def rasterize_labels(
    truth: gpd.GeoDataFrame,
    grid: Grid,
    field: str | None = "CLASS1",
    crop_classes: Sequence[str] = ("G", "R", "F", "P", "T", "D", "C", "V"),
    aoi: gpd.GeoDataFrame | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterize ground-truth polygons to a uint8 label mask on ``grid``.

    Args:
        truth: ground-truth polygons in any CRS.
        grid: the image grid.
        field: class attribute, or ``None`` when every polygon is crop.
        crop_classes: values of ``field`` that are crop.
        aoi: area of interest; outside it is nodata. ``None``: the whole grid is labelled.
        valid: optional boolean (rows, cols) mask of valid image pixels; invalid ones become nodata.

    Returns:
        uint8 (rows, cols): 1 crop, 0 non-crop, 255 nodata.
    """
    crops = crop_polygons(truth, field, crop_classes).to_crs(grid.crs)
    shapes = _polygonal(crops)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    if shapes:
        rasterize(shapes, out=labels, transform=grid.transform, default_value=CROP, fill=NONCROP)
    if aoi is not None:
        labels[~aoi_mask(aoi, grid)] = NODATA
    else:
        extent = box(*grid.bounds)
        if not truth.to_crs(grid.crs).intersects(extent).any():
            raise NoOverlapError("the ground truth does not overlap the image; check both files and their CRS")
    if valid is not None:
        labels[~valid] = NODATA
    return labels


def check_labels(labels: np.ndarray, source: str | Path = "labels") -> None:
    """Refuse labels that cannot train or evaluate: no labelled pixel, or only one class."""
    n_crop = int((labels == CROP).sum())
    n_non = int((labels == NONCROP).sum())
    if n_crop + n_non == 0:
        raise LabelError(
            f"{source}: no labelled pixel on the image; check that the labels and AOI overlap valid image pixels"
        )
    if n_crop == 0 or n_non == 0:
        only = "crop" if n_crop else "non-crop"
        raise LabelError(
            f"{source}: every labelled pixel is {only}; the labels need both classes. Check --label-field and "
            "--crop-classes, or give an AOI larger than the crop polygons"
        )


def load_labels(
    labels: str | Path,
    grid: Grid,
    aoi: str | Path | None = None,
    field: str | None = "CLASS1",
    crop_classes: Sequence[str] = ("G", "R", "F", "P", "T", "D", "C", "V"),
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """File edge of this stage: labels from a vector file or a label raster, on ``grid``.

    Args:
        labels: ground-truth polygons (any vector format cropseg reads) or a label raster on any
            grid (1 crop, 0 non-crop, 255 nodata).
        grid: the image grid.
        aoi: optional AOI vector file; outside it is nodata.
        field: class attribute of the polygons (``None``: every polygon is crop).
        crop_classes: values of ``field`` that are crop.
        valid: optional boolean mask of valid image pixels.

    Returns:
        uint8 (rows, cols): 1 crop, 0 non-crop, 255 nodata.
    """
    if vector_io.is_raster_path(labels):
        out = raster_io.reproject_to_grid(labels, grid, nodata=NODATA, what="label raster").astype(np.uint8)
        bad = ~np.isin(out, (CROP, NONCROP, NODATA))
        if bad.any():
            values = ", ".join(str(v) for v in np.unique(out[bad])[:5])
            raise LabelError(
                f"label raster {labels} holds values other than 1 (crop), 0 (non-crop) and 255 (nodata): {values}"
            )
        if aoi is not None:
            out[~aoi_mask(vector_io.read_vector(aoi, "AOI"), grid)] = NODATA
        if valid is not None:
            out[~valid] = NODATA
        return out
    truth = vector_io.read_vector(labels, "ground truth")
    aoi_gdf = vector_io.read_vector(aoi, "AOI") if aoi is not None else None
    return rasterize_labels(truth, grid, field=field, crop_classes=crop_classes, aoi=aoi_gdf, valid=valid)
