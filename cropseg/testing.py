"""Tiny rasters and polygons for tests and examples (a fixed seed, a known CRS and transform).

The scene is a 48 x 40 pixel, 3 m grid in UTM zone 10N (EPSG:32610) near Sacramento. Crop fields
are bright in NIR and dark in red; non-crop land is bare soil. One crop field has a hole (a
farmstead) and one crop feature is a MultiPolygon of two parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from affine import Affine
from pyproj import CRS
from shapely.geometry import MultiPolygon, Polygon, box

from cropseg.grid import Grid
from cropseg.radiometry import SceneMetadata, planet_metadata_xml
from cropseg.raster_io import write_raster

TEST_CRS = CRS.from_epsg(32610)
TEST_ORIGIN = (630_000.0, 4_240_000.0)
TEST_COEFFICIENTS = (2.0e-5, 2.0e-5, 2.5e-5, 4.0e-5)
#: Late-summer reflectance (blue, green, red, nir) of the two covers.
CROP_REFLECTANCE = (0.04, 0.08, 0.05, 0.45)
SOIL_REFLECTANCE = (0.10, 0.14, 0.18, 0.24)


def make_grid(width: int = 48, height: int = 40, res: float = 3.0) -> Grid:
    """A north-up UTM grid."""
    x0, y0 = TEST_ORIGIN
    return Grid(Affine(res, 0, x0, 0, -res, y0), TEST_CRS, width, height)


def _px_box(grid: Grid, c0: float, r0: float, c1: float, r1: float) -> Polygon:
    x0, y0 = grid.transform @ (c0, r0)
    x1, y1 = grid.transform @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def field_polygons(grid: Grid) -> gpd.GeoDataFrame:
    """Ground truth in EPSG:4326 with a DWR-style CLASS1 attribute.

    - field 1 (CLASS1 "F"): columns 2-20, rows 2-18, with a hole at columns 8-12, rows 8-12;
    - field 2 (CLASS1 "V"): a MultiPolygon, columns 26-44 x rows 2-12 and columns 26-44 x rows 24-36;
    - field 3 (CLASS1 "U", urban, not crop): columns 2-20, rows 24-36.
    """
    f1 = _px_box(grid, 2, 2, 20, 18).difference(_px_box(grid, 8, 8, 12, 12))
    f2 = MultiPolygon([_px_box(grid, 26, 2, 44, 12), _px_box(grid, 26, 24, 44, 36)])
    f3 = _px_box(grid, 2, 24, 20, 36)
    gdf = gpd.GeoDataFrame({"CLASS1": ["F", "V", "U"]}, geometry=[f1, f2, f3], crs=grid.crs)
    return gdf.to_crs("EPSG:4326")


def expected_labels(grid: Grid) -> np.ndarray:
    """The labels :func:`field_polygons` should rasterize to (1 crop, 0 non-crop), without AOI."""
    lab = np.zeros(grid.shape, dtype=np.uint8)
    lab[2:18, 2:20] = 1
    lab[8:12, 8:12] = 0
    lab[2:12, 26:44] = 1
    lab[24:36, 26:44] = 1
    return lab


def make_dn(labels: np.ndarray, coefficients: tuple[float, ...] = TEST_COEFFICIENTS, seed: int = 0) -> np.ndarray:
    """uint16 (4, rows, cols) radiance DNs: crop reflectance where labels == 1, soil elsewhere, with noise."""
    rng = np.random.default_rng(seed)
    refl = np.where(
        labels[None] == 1,
        np.asarray(CROP_REFLECTANCE)[:, None, None],
        np.asarray(SOIL_REFLECTANCE)[:, None, None],
    )
    refl = refl * rng.normal(1.0, 0.05, size=refl.shape)
    dn = refl / np.asarray(coefficients)[:, None, None]
    return np.asarray(np.clip(np.round(dn), 1, 65535), dtype=np.uint16)


def write_test_scene(folder: str | Path, grid: Grid | None = None, seed: int = 0) -> dict[str, Path]:
    """Write a tiny scene (image.tif, image_metadata.xml, truth.geojson) matching :func:`field_polygons`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grid = grid or make_grid()
    dn = make_dn(expected_labels(grid), seed=seed)
    image = write_raster(folder / "image.tif", dn, grid, nodata=0, descriptions=["blue", "green", "red", "nir"])
    meta = SceneMetadata(
        identifier="test_3B_AnalyticMS", acquired="2016-08-31T18:00:00+00:00", product_type="L3B", epsg=32610,
        rows=grid.height, cols=grid.width, gsd=grid.res[0], reflectance_coefficients=TEST_COEFFICIENTS,
        atmospheric_correction=False,
    )
    xml = folder / "image_metadata.xml"
    xml.write_text(planet_metadata_xml(meta))
    truth = folder / "truth.geojson"
    field_polygons(grid).to_file(truth, driver="GeoJSON")
    return {"image": image, "metadata": xml, "truth": truth}


def predict_tiled(trained: Any, padded: np.ndarray, valid: np.ndarray, halo: int, tile: tuple[int, int]) -> np.ndarray:
    """Crop probability of a whole image predicted tile by tile, as the streaming engine cuts it.

    Args:
        trained: a :class:`cropseg.models.TrainedModel`.
        padded: reflectance (bands, rows + 2 halo, cols + 2 halo).
        valid: boolean (rows, cols).
        halo: pixels of padding on every side of ``padded``.
        tile: (rows, cols) of a tile.
    """
    from cropseg.predict import predict_proba_window

    out = np.full(valid.shape, np.nan, np.float32)
    t_rows, t_cols = tile
    for r in range(0, valid.shape[0], t_rows):
        for c in range(0, valid.shape[1], t_cols):
            core = valid[r : r + t_rows, c : c + t_cols]
            window = padded[:, r : r + core.shape[0] + 2 * halo, c : c + core.shape[1] + 2 * halo]
            out[r : r + core.shape[0], c : c + core.shape[1]] = predict_proba_window(trained, window, core, halo)
    return out
