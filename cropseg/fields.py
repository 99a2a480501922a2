"""Field-level decisions: one crop / non-crop decision per field polygon.

Per pixel, harvested grain and idle land look alike in one late-summer image, and a model calls parts of a
field crop and parts non-crop. Averaged over the whole field, the per-pixel probabilities are mostly on
the right side (BENCHMARKS.md, "Object-level decisions"). Given the fields' polygons (a land-use survey, a
parcel register, last season's field map: geometry only; any class attribute is ignored), each field takes
the mean crop probability of its valid pixels and one decision at the model's threshold; pixels outside
every field keep their own.

The probabilities are summed per field tile by tile (sums are exact in any tiling), then each tile is
decided with the fields' means: a scene is classified twice, and never held in memory as floats.

:func:`field_ids`, :func:`accumulate`, :func:`field_means` and :func:`decide` are pure (arrays, a
:class:`~cropseg.grid.Grid`, a window and a GeoDataFrame in); :func:`decide_fields` runs a model over a
scene; :func:`decide_fields_files` is the file edge behind ``cropseg fields``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from rasterio.features import rasterize

from cropseg import accel, vector_io
from cropseg.config import Config
from cropseg.errors import InvalidVectorError, NoOverlapError
from cropseg.grid import Grid, Window
from cropseg.manifest import record_stage
from cropseg.models import TrainedModel, load_model
from cropseg.predict import predict_proba_window, with_refinement
from cropseg.progress import ProgressCallback, report
from cropseg.raster_io import write_raster
from cropseg.scene import ProductChoice, Scene, open_scene
from cropseg.tiling import Tile, plan_tiles

NODATA = 255
#: Values of the ``decision`` column of the fields table.
DECISIONS = ("non-crop", "crop", "no data")


def field_ids(fields: gpd.GeoDataFrame, grid: Grid, window: Window) -> np.ndarray:
    """Field of each pixel of ``window``: int32 (rows, cols).

    1 + the row position in ``fields`` (on ``grid``'s CRS) of the field covering the pixel's centre, 0
    outside every field; where fields overlap, the later one.
    """
    shape = (int(window.height), int(window.width))
    items = [(geom, i + 1) for i, geom in enumerate(fields.geometry) if geom is not None and not geom.is_empty]
    if not items:
        return np.zeros(shape, np.int32)
    out = rasterize(items, out_shape=shape, transform=grid.window_grid(window).transform, fill=0, dtype="int32")
    return np.asarray(out)


def accumulate(totals: np.ndarray, proba: np.ndarray, ids: np.ndarray) -> None:
    """Add each field's sum of valid probabilities (``totals[0]``) and its count of them (``totals[1]``).

    ``totals``: float64 (2, fields + 1), index 0 for the pixels outside every field; ``proba``: float
    (rows, cols), NaN where not valid; ``ids``: :func:`field_ids` of the same window.
    """
    valid = ~np.isnan(proba)
    keys = ids[valid]
    size = totals.shape[1]
    totals[0] += np.bincount(keys, weights=proba[valid].astype(np.float64), minlength=size)
    totals[1] += np.bincount(keys, minlength=size)


def field_means(totals: np.ndarray) -> np.ndarray:
    """Mean probability of each field (float64, fields + 1; index 0 and fields without a valid pixel: NaN)."""
    means = np.divide(totals[0], totals[1], out=np.full(totals.shape[1], np.nan), where=totals[1] > 0)
    means[0] = np.nan
    return np.asarray(means)


def decide(proba: np.ndarray, ids: np.ndarray, means: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 (rows, cols): 1 crop, 0 non-crop, 255 where ``proba`` is NaN.

    A pixel in a field with a mean (:func:`field_means`) takes the field's decision, any other its own.
    """
    field = means[ids]
    value = np.where(np.isnan(field), proba, field)
    out = np.where(value >= threshold, 1, 0).astype(np.uint8)
    out[np.isnan(proba)] = NODATA
    return out


@dataclass(frozen=True)
class FieldDecisions:
    """The field-decided prediction and the fields with their decisions.

    Attributes:
        prediction: uint8 (rows, cols) on the scene's grid (1 crop, 0 non-crop, 255 nodata).
        fields: the input fields (scene CRS) with ``crop_probability`` (mean over the field's valid
            pixels, NaN without any), ``pixels`` (how many) and ``decision`` (:data:`DECISIONS`).
        threshold: the model's threshold.
    """

    prediction: np.ndarray
    fields: gpd.GeoDataFrame
    threshold: float


def decide_fields(
    trained: TrainedModel, scene: Scene, fields: gpd.GeoDataFrame, tile_size: int = 512,
    progress: ProgressCallback | None = None, workers: int | None = None,
) -> FieldDecisions:
    """Classify ``scene`` with ``trained`` and decide each of ``fields`` (polygons, any CRS) as a whole.

    ``workers``: threads classifying tiles (default: one per core).
    """
    grid = scene.grid
    fields = fields_on_grid(fields, grid)
    tiles = plan_tiles((grid.height, grid.width), tile_size, halo=trained.halo)
    totals = np.zeros((2, len(fields) + 1), np.float64)

    def tile_proba(tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        reflectance = scene.read_reflectance(tile.read, boundless=True)
        proba = predict_proba_window(trained, reflectance, scene.read_valid(tile.core), tile.halo)
        return proba, field_ids(fields, grid, tile.core)

    prediction = np.full((grid.height, grid.width), NODATA, np.uint8)
    # the tiles' features and models release the GIL: threads, results taken in order as they come
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for i, (proba, ids) in enumerate(pool.map(tile_proba, tiles)):
            accumulate(totals, proba, ids)
            report(progress, "Field means", i + 1, len(tiles))
        means = field_means(totals)
        for i, (tile, (proba, ids)) in enumerate(zip(tiles, pool.map(tile_proba, tiles), strict=True)):
            prediction[tile.core.slices] = decide(proba, ids, means, trained.threshold)
            report(progress, "Deciding", i + 1, len(tiles))
    table = fields.copy()
    table["crop_probability"] = means[1:]
    table["pixels"] = totals[1, 1:].astype(np.int64)
    decision = np.where(means[1:] >= trained.threshold, DECISIONS[1], DECISIONS[0])
    table["decision"] = np.where(np.isnan(means[1:]), DECISIONS[2], decision)
    return FieldDecisions(prediction, table, trained.threshold)


def fields_on_grid(fields: gpd.GeoDataFrame, grid: Grid) -> gpd.GeoDataFrame:
    """The polygon rows of ``fields`` on ``grid``'s CRS; refuse files with none or none over the grid."""
    geoms = fields.geometry
    polygonal = geoms.notna() & ~geoms.is_empty & geoms.geom_type.isin(["Polygon", "MultiPolygon"])
    if not polygonal.any():
        raise InvalidVectorError("the fields file holds no polygons; give the field boundaries as (multi)polygons")
    if fields.crs is None:
        raise InvalidVectorError("the fields file has no CRS; save it with one (e.g. EPSG:4326 GeoJSON)")
    out = fields[polygonal].to_crs(grid.crs).reset_index(drop=True)
    if not out.intersects(shapely.box(*grid.bounds)).any():
        raise NoOverlapError("no field polygon overlaps the image; give the fields of the imaged area")
    return out


def decide_fields_files(
    model_dir: str | Path,
    image: str | Path,
    fields_path: str | Path,
    out_dir: str | Path,
    *,
    metadata: str | Path | None = None,
    udm2: str | Path | None = None,
    product: ProductChoice = "auto",
    config: Config | None = None,
    progress: ProgressCallback | None = None,
    tile_size: int | None = None,
) -> dict[str, Path]:
    """File edge: decide the fields of ``fields_path`` on a scene and write the results into ``out_dir``.

    Writes ``prediction.tif`` (COG), ``fields.geojson`` (RFC 7946) and ``fields.gpkg`` (scene CRS);
    returns their paths.
    """
    cfg = config or Config()
    trained = with_refinement(load_model(model_dir), cfg.predict)
    scene = open_scene(image, metadata, udm2, product=product, mask_haze=cfg.radiometry.mask_haze)
    fields = vector_io.read_vector(fields_path, "fields file")
    # compiled LightGBM trees, as cropseg predict uses them (the scene is classified twice)
    trained = accel.accelerate(trained, "auto", 2 * scene.grid.width * scene.grid.height)
    result = decide_fields(trained, scene, fields, tile_size or cfg.predict.tile_size, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tags = {"CROPSEG_CODING": "1=crop 0=non-crop 255=nodata", "CROPSEG_MODEL": str(trained.card.get("model", "")),
            "CROPSEG_DECIDED": f"per field ({Path(fields_path).name}), elsewhere per pixel"}
    paths = {
        "prediction": write_raster(out / "prediction.tif", result.prediction, scene.grid, nodata=NODATA,
                                   descriptions=("crop",), tags=tags),
        "fields_geojson": vector_io.write_geojson(result.fields, out / "fields.geojson"),
        "fields_gpkg": vector_io.write_gpkg(result.fields, out / "fields.gpkg", "fields"),
    }
    record_stage(scene.image.parent, "fields", {
        "model_dir": str(model_dir), "fields": str(fields_path), **{k: str(v) for k, v in paths.items()},
    })
    return paths
