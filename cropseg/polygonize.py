"""Polygonize: a crop mask to georeferenced field polygons.

Steps, each configurable: a median blur removes speckle (5 x 5 by default, as in the reference),
rasterio traces the crop regions as polygons *with holes*, shapely simplifies them (3 m,
topology preserved) and polygons under a minimum area (2500 m2) are dropped. Areas are computed
in the image CRS when it is projected, geodesically otherwise.

Whole scenes (:func:`polygonize_file`, :func:`polygonize_raster`) are processed window by window
and never loaded at once, with no seams: each window is blurred with a halo of ``median_size // 2``
pixels (so every pixel sees the neighbourhood it has in the whole image), its crop regions are
labelled and traced in pixel coordinates, and regions that continue across a window border are
joined (a union-find over the labels facing each other across the border; only those pieces are
dissolved with shapely). A field crossing a window border comes out as one polygon, exactly as if
the whole scene had been traced at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

from cropseg import raster_io, vector_io
from cropseg.errors import InputError, InvalidRasterError
from cropseg.grid import Grid, Window
from cropseg.label import CROP, NODATA, NONCROP
from cropseg.progress import ProgressCallback, report
from cropseg.tiling import inner_slices, intersect, plan_tiles


def traced_polygon(geom: dict[str, Any]) -> shapely.Polygon:
    """A polygon from one GeoJSON-like polygon of ``rasterio.features.shapes``.

    Builds the rings from arrays rather than coordinate by coordinate in Python (as
    ``shapely.geometry.shape`` does): the same polygon, faster on scenes of thousands of fields.
    """
    shell, *holes = (np.asarray(ring, dtype=np.float64) for ring in geom["coordinates"])
    return shapely.Polygon(shell, holes)


def denoise(pred: np.ndarray, size: int = 5) -> np.ndarray:
    """Median-blur a prediction (1 crop, 0 non-crop, 255 nodata); nodata stays nodata.

    Nodata pixels count as non-crop inside the filter so that they never create crop.
    """
    if size < 1 or size % 2 == 0:
        raise InputError(f"median size must be an odd positive integer, got {size}")
    if size == 1:
        return pred.copy()
    # the median of 0/1 values in a size x size window is their majority: count the ones with an
    # unnormalised box filter (exact integer sums, far faster than a rank filter), edges replicated
    crop = (pred == CROP).view(np.uint8)
    ones = cv2.boxFilter(crop, cv2.CV_32S, (size, size), normalize=False, borderType=cv2.BORDER_REPLICATE)
    out = np.where(ones > (size * size) // 2, np.uint8(CROP), np.uint8(NONCROP))
    out[pred == NODATA] = NODATA
    return out


def _finish(geoms: Sequence[BaseGeometry], crs: object, simplify: float, min_area: float) -> gpd.GeoDataFrame:
    """Simplify, measure, filter by area and number polygons in the CRS ``crs``.

    Rings are first put in a canonical form (collinear vertices dropped, starting at their lowest
    corner), so simplification gives the same polygons however the regions were traced or joined.
    """
    arr = shapely.normalize(np.asarray(geoms, dtype=object))
    arr = shapely.simplify(arr, 0.0, preserve_topology=True)
    gdf = gpd.GeoDataFrame(geometry=list(arr), crs=crs)
    if simplify > 0 and not gdf.empty:
        gdf = gdf.set_geometry(gdf.geometry.simplify(simplify, preserve_topology=True))
    gdf = gdf[~gdf.geometry.is_empty]
    if gdf.crs.is_projected:
        factor = gdf.crs.axis_info[0].unit_conversion_factor
        area = gdf.geometry.area * factor * factor
    else:
        geod = Geod(ellps="WGS84")
        area = gdf.geometry.apply(lambda g: abs(geod.geometry_area_perimeter(g)[0]))
    gdf = gdf.assign(area_m2=area.round(1), area_ha=(area / 10_000).round(4))
    gdf = gdf[gdf["area_m2"] >= min_area].sort_values("area_m2", ascending=False, kind="stable")
    gdf = gdf.reset_index(drop=True)
    gdf.insert(0, "id", np.arange(1, len(gdf) + 1))
    return gdf


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
        traced_polygon(geom)
        for geom, value in shapes(crop.astype(np.uint8), mask=crop, transform=grid.transform, connectivity=4)
        if value == 1
    ]
    return _finish(geoms, grid.crs, simplify, min_area)


class _UnionFind:
    """Disjoint sets of region ids (only ids that touch a window border ever enter)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _read_padded(pred: str | Path, window: Window, shape: tuple[int, int]) -> np.ndarray:
    """``window`` of a 1-band raster, its parts beyond the raster filled by replicating the edge."""
    part = intersect(window, shape)
    if part is None:  # pragma: no cover - plan windows always overlap the grid
        raise ValueError(f"window {window} lies outside the raster")
    arr = raster_io.read(pred, part)[0]
    rows, cols = inner_slices(window, part)
    pads = ((rows.start, window.height - rows.stop), (cols.start, window.width - cols.stop))
    return np.pad(arr, pads, mode="edge") if any(any(p) for p in pads) else arr


def trace_pieces(
    pred: str | Path,
    median_size: int = 5,
    tile_size: int = 2048,
    progress: ProgressCallback | None = None,
) -> tuple[list[BaseGeometry], Grid]:
    """Seamless crop polygons of a prediction raster, in pixel coordinates, window by window.

    Each window is median-blurred with a halo, its crop regions (4-connected) are labelled and
    traced; labels facing each other across a window border are joined, and only the pieces of
    joined regions are dissolved. Memory holds one window plus the polygons.

    Returns:
        (one polygon per crop region, columns / rows as x / y; the raster's grid).
    """
    if median_size < 1 or median_size % 2 == 0:
        raise InputError(f"median size must be an odd positive integer, got {median_size}")
    if tile_size < 1:
        raise InputError(f"tile size must be positive, got {tile_size}")
    info = raster_io.read_info(pred, "prediction")
    if info.count != 1:
        raise InvalidRasterError(f"prediction {pred} has {info.count} bands; give a cropseg prediction (1 band)")
    shape_ = info.grid.shape
    tiles = plan_tiles(shape_, tile_size, median_size // 2)
    pieces: list[tuple[int, BaseGeometry]] = []
    # per tile core (row_off, col_off): region ids along its (top, bottom, left, right) edges
    edges: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    next_id = 1
    for i, tile in enumerate(tiles):
        report(progress, "Polygonizing", i, len(tiles))
        core = tile.core
        blurred = denoise(_read_padded(pred, tile.read, shape_), median_size)[tile.crop]
        labels, n = ndimage.label(blurred == CROP)
        if n == 0:
            continue
        labels = labels.astype(np.int64)
        labels[labels > 0] += next_id - 1
        edges[(core.row_off, core.col_off)] = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
        transform = Affine.translation(core.col_off, core.row_off)
        for geom, value in shapes(
            labels.astype(np.int32), mask=labels > 0, transform=transform, connectivity=4
        ):
            pieces.append((int(value), traced_polygon(geom)))
        next_id += n
    report(progress, "Polygonizing", len(tiles), len(tiles))

    sets = _UnionFind()
    for (row, col), (_top, bottom, _left, right) in edges.items():
        for other, mine, theirs in (
            (edges.get((row, col + len(bottom))), right, 2),
            (edges.get((row + len(right), col)), bottom, 0),
        ):
            if other is None:
                continue
            facing = other[theirs]
            both = (mine > 0) & (facing > 0)
            if both.any():
                for a, b in np.unique(np.stack([mine[both], facing[both]], axis=1), axis=0):
                    sets.union(int(a), int(b))
    groups: dict[int, list[BaseGeometry]] = {}
    for rid, geom in pieces:
        groups.setdefault(sets.find(rid), []).append(geom)
    geoms = [parts[0] if len(parts) == 1 else shapely.union_all(parts) for parts in groups.values()]
    return geoms, info.grid


def to_crs_coordinates(geoms: list[BaseGeometry], grid: Grid) -> list[BaseGeometry]:
    """Pixel-coordinate geometries (x = column, y = row) moved onto ``grid``'s CRS coordinates."""
    t = grid.transform
    matrix = np.array([[t.a, t.d], [t.b, t.e]])
    offset = np.array([t.c, t.f])
    moved = shapely.transform(np.asarray(geoms, dtype=object), lambda xy: xy @ matrix + offset)
    return list(moved)


def polygonize_raster(
    pred: str | Path,
    *,
    median_size: int = 5,
    simplify: float = 3.0,
    min_area: float = 2500.0,
    tile_size: int = 2048,
    progress: ProgressCallback | None = None,
) -> gpd.GeoDataFrame:
    """Field polygons of a whole prediction raster (any size), in its CRS, without loading it at once.

    Same result as ``polygons_from_mask(denoise(whole, median_size), grid, simplify, min_area)`` on the
    whole array, with fields that cross window borders whole.
    """
    geoms, grid = trace_pieces(pred, median_size, tile_size, progress)
    return _finish(to_crs_coordinates(geoms, grid), grid.crs, simplify, min_area)


def polygonize_file(
    pred: str | Path,
    out: str | Path,
    *,
    gpkg: str | Path | None = None,
    median_size: int = 5,
    simplify: float = 3.0,
    min_area: float = 2500.0,
    tile_size: int = 2048,
    progress: ProgressCallback | None = None,
) -> gpd.GeoDataFrame:
    """File edge: prediction GeoTIFF to RFC 7946 GeoJSON (EPSG:4326) and a GeoPackage in the image CRS.

    The GeoPackage goes to ``gpkg``, or beside ``out`` with the ``.gpkg`` suffix when not given. The
    raster is read window by window (``tile_size``), seamlessly (see :func:`polygonize_raster`).
    """
    polys = polygonize_raster(
        pred, median_size=median_size, simplify=simplify, min_area=min_area, tile_size=tile_size, progress=progress
    )
    out = Path(out)
    vector_io.write_geojson(polys, out)
    vector_io.write_gpkg(polys, Path(gpkg) if gpkg else out.with_suffix(".gpkg"), layer="fields")
    return polys
