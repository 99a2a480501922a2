"""Vector file I/O: reading ground truth and AOIs, writing polygons.

Reads GeoJSON FeatureCollections, bare JSON lists of Features (the reference's DWR files),
bare GeoJSON geometries (the reference's AOI files), and anything OGR reads (Shapefile,
GeoPackage, ...). Writes RFC 7946 GeoJSON and GeoPackage through pyogrio, atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import pyogrio
import shapely
from pyproj import CRS

from cropseg.errors import InputFileNotFoundError, InvalidVectorError, OutputError
from cropseg.raster_io import atomic_path

_GEOMETRY_TYPES = {
    "Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection",
}
_JSON_SUFFIXES = {".json", ".geojson"}
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2"}


def _from_geojson_obj(obj: Any, path: Path) -> gpd.GeoDataFrame:
    crs: Any = "EPSG:4326"  # RFC 7946: GeoJSON is WGS 84 unless an old-style "crs" member says otherwise
    if isinstance(obj, dict) and isinstance(obj.get("crs"), dict):
        name = obj["crs"].get("properties", {}).get("name")
        if name:
            crs = CRS.from_user_input(name)
    if isinstance(obj, list):
        features = obj
    elif isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        features = obj.get("features", [])
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        features = [obj]
    elif isinstance(obj, dict) and obj.get("type") in _GEOMETRY_TYPES:
        features = [{"type": "Feature", "properties": {}, "geometry": obj}]
    else:
        raise InvalidVectorError(
            f"{path} is JSON but not GeoJSON: expected a FeatureCollection, a Feature, a list of Features "
            "or a geometry"
        )
    bad = [i for i, f in enumerate(features) if not (isinstance(f, dict) and "geometry" in f)]
    if bad:
        raise InvalidVectorError(f"{path}: item {bad[0]} is not a GeoJSON Feature (no 'geometry')")
    rows = [dict(f.get("properties") or {}) for f in features]
    for row in rows:
        row.pop("style", None)  # leaflet styling added by the reference notebooks
    geoms = [shapely.geometry.shape(f["geometry"]) if f["geometry"] else None for f in features]
    return gpd.GeoDataFrame(rows, geometry=geoms, crs=crs)


def read_vector(path: str | Path, what: str = "vector file") -> gpd.GeoDataFrame:
    """Read any supported vector file as a GeoDataFrame with a CRS, dropping empty geometries.

    Raises:
        InputFileNotFoundError: the file does not exist.
        InvalidVectorError: unreadable, no CRS, or no features.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError(f"{what} {path} does not exist; check the path")
    if path.suffix.lower() in _JSON_SUFFIXES:
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidVectorError(f"{what} {path} is not valid JSON: {exc}") from exc
        gdf = _from_geojson_obj(obj, path)
    else:
        try:
            gdf = gpd.read_file(path)
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
            raise InvalidVectorError(
                f"{what} {path} is not a vector file OGR can read ({exc}); give GeoJSON, Shapefile or GeoPackage"
            ) from exc
    if gdf.crs is None:
        raise InvalidVectorError(f"{what} {path} has no CRS; save it with one (e.g. EPSG:4326)")
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if gdf.empty:
        raise InvalidVectorError(f"{what} {path} has no features with a geometry")
    if not gdf.geometry.is_valid.all():
        gdf = gdf.set_geometry(gdf.geometry.make_valid())
    return gdf.reset_index(drop=True)


def is_raster_path(path: str | Path) -> bool:
    """Whether a path names a raster (by its extension)."""
    return Path(path).suffix.lower() in RASTER_SUFFIXES


def write_geojson(gdf: gpd.GeoDataFrame, path: str | Path) -> Path:
    """Write RFC 7946 GeoJSON (EPSG:4326, right-hand rule), atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".geojson") as tmp:
        try:
            pyogrio.write_dataframe(
                gdf.to_crs("EPSG:4326"), tmp, driver="GeoJSON", layer_options={"RFC7946": "YES"}
            )
        except Exception as exc:
            raise OutputError(f"cannot write {path}: {exc}") from exc
    return path


def write_gpkg(gdf: gpd.GeoDataFrame, path: str | Path, layer: str) -> Path:
    """Write a GeoPackage layer in the frame's own CRS, atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".gpkg") as tmp:
        try:
            pyogrio.write_dataframe(gdf, tmp, driver="GPKG", layer=layer)
        except Exception as exc:
            raise OutputError(f"cannot write {path}: {exc}") from exc
    return path
