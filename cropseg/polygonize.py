"""Polygonize: a crop mask to georeferenced field polygons.

Steps, each configurable: a median blur removes speckle (5 x 5 by default, as in the reference),
rasterio traces the crop regions as polygons *with holes*, shapely simplifies them (3 m,
topology preserved) and polygons under a minimum area (2500 m2) are dropped. Areas are computed
in the image CRS when it is projected, geodesically otherwise.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
from pyproj import Geod
from rasterio.features import shapes
from scipy.ndimage import median_filter
from shapely.geometry import shape

from cropseg import raster_io, vector_io
from cropseg.errors import InputError, InvalidRasterError
from cropseg.grid import Grid
from cropseg.label import CROP, NODATA, NONCROP


def denoise(pred: np.ndarray, size: int = 5) -> np.ndarray:
    """Median-blur a prediction (1 crop, 0 non-crop, 255 nodata); nodata stays nodata.

    Nodata pixels count as non-crop inside the filter so that they never create crop.
    """
    if size < 1 or size % 2 == 0:
        raise InputError(f"median size must be an odd positive integer, got {size}")
    if size == 1:
        return pred.copy()
    crop = (pred == CROP).astype(np.uint8)
    blurred = median_filter(crop, size=size, mode="nearest")
    out = np.where(blurred == 1, CROP, NONCROP).astype(np.uint8)
    out[pred == NODATA] = NODATA
    return out


def polygons_from_mask(
    pred: np.ndarray,
    grid: Grid,
    simplify: float = 3.0,
    min_area: float = 2500.0,
) -> gpd.GeoDataFrame:
    """Crop regions of a prediction as polygons in the grid CRS, with ``area_m2`` and ``area_ha``.

    Args:
        pred: uint8 (rows, cols) 1 crop, 0 non-crop, 255 nodata.
        grid: its grid.
        simplify: Douglas-Peucker tolerance in CRS units (topology preserved); 0 to keep every vertex.
        min_area: drop polygons smaller than this many square metres.
    """
    crop = pred == CROP
    geoms = [
        shape(geom)
        for geom, value in shapes(crop.astype(np.uint8), mask=crop, transform=grid.transform, connectivity=4)
        if value == 1
    ]
    gdf = gpd.GeoDataFrame(geometry=geoms, crs=grid.crs)
    if simplify > 0 and not gdf.empty:
        gdf = gdf.set_geometry(gdf.geometry.simplify(simplify, preserve_topology=True))
    gdf = gdf[~gdf.geometry.is_empty]
    if grid.crs.is_projected:
        factor = grid.crs.axis_info[0].unit_conversion_factor
        area = gdf.geometry.area * factor * factor
    else:
        geod = Geod(ellps="WGS84")
        area = gdf.geometry.apply(lambda g: abs(geod.geometry_area_perimeter(g)[0]))
    gdf = gdf.assign(area_m2=area.round(1), area_ha=(area / 10_000).round(4))
    gdf = gdf[gdf["area_m2"] >= min_area].sort_values("area_m2", ascending=False).reset_index(drop=True)
    gdf.insert(0, "id", np.arange(1, len(gdf) + 1))
    return gdf


def polygonize_file(
    pred: str | Path,
    out: str | Path,
    *,
    gpkg: str | Path | None = None,
    median_size: int = 5,
    simplify: float = 3.0,
    min_area: float = 2500.0,
) -> gpd.GeoDataFrame:
    """File edge: prediction GeoTIFF to RFC 7946 GeoJSON (EPSG:4326) and a GeoPackage in the image CRS.

    The GeoPackage goes to ``gpkg``, or beside ``out`` with the ``.gpkg`` suffix when not given.
    """
    info = raster_io.read_info(pred, "prediction")
    if info.count != 1:
        raise InvalidRasterError(f"prediction {pred} has {info.count} bands; give a cropseg prediction (1 band)")
    arr = raster_io.read(pred)[0]
    polys = polygons_from_mask(denoise(arr, median_size), info.grid, simplify, min_area)
    out = Path(out)
    vector_io.write_geojson(polys, out)
    vector_io.write_gpkg(polys, Path(gpkg) if gpkg else out.with_suffix(".gpkg"), layer="fields")
    return polys
