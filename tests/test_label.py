import json

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box, mapping

from cropseg.errors import InputFileNotFoundError, InvalidVectorError, LabelError, NoOverlapError
from cropseg.label import check_labels, load_labels, rasterize_labels
from cropseg.raster_io import write_raster
from cropseg.testing import expected_labels, field_polygons, make_grid
from cropseg.vector_io import read_vector
from tests.conftest import shared_path


def test_holes_and_multipolygons():
    grid = make_grid()
    labels = rasterize_labels(field_polygons(grid), grid)
    assert (labels == expected_labels(grid)).all()
    assert labels[10, 10] == 0  # hole of field 1
    assert labels[5, 30] == 1 and labels[30, 30] == 1  # both parts of the MultiPolygon
    assert labels[30, 10] == 0  # urban, not a crop class


def test_crop_classes_and_field():
    grid = make_grid()
    labels = rasterize_labels(field_polygons(grid), grid, crop_classes=["U"])
    assert labels[30, 10] == 1 and labels[5, 5] == 0
    every = rasterize_labels(field_polygons(grid), grid, field=None)
    assert every[30, 10] == 1 and every[5, 5] == 1
    with pytest.raises(LabelError, match="CLASS2"):
        rasterize_labels(field_polygons(grid), grid, field="CLASS2")


def test_aoi_and_valid_mask():
    grid = make_grid()
    aoi_geom = box(*grid.bounds).buffer(-30)  # 10 px inside the edge
    aoi = gpd.GeoDataFrame(geometry=[aoi_geom], crs=grid.crs)
    valid = np.ones(grid.shape, bool)
    valid[0:20, 0:24] = False
    labels = rasterize_labels(field_polygons(grid), grid, aoi=aoi, valid=valid)
    assert (labels[:10] == 255).all() and (labels[:, -10:] == 255).all()
    assert labels[15, 15] == 255  # invalid pixel
    assert labels[25, 30] == 1 and labels[25, 15] == 0


def test_aoi_not_overlapping():
    grid = make_grid()
    far = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs=grid.crs)
    with pytest.raises(NoOverlapError):
        rasterize_labels(field_polygons(grid), grid, aoi=far)


def test_formats(tmp_path):
    grid = make_grid()
    gdf = field_polygons(grid)
    feats = json.loads(gdf.to_json())["features"]
    (tmp_path / "list.geojson").write_text(json.dumps(feats))  # the DWR files' bare list of Features
    (tmp_path / "aoi.geojson").write_text(json.dumps(mapping(box(*gdf.total_bounds))))  # bare geometry
    gdf.to_file(tmp_path / "fc.geojson", driver="GeoJSON")
    gdf.to_file(tmp_path / "shp.shp")
    gdf.to_file(tmp_path / "pkg.gpkg", driver="GPKG")
    expected = expected_labels(grid)
    for name in ("list.geojson", "fc.geojson", "shp.shp", "pkg.gpkg"):
        labels = load_labels(tmp_path / name, grid, aoi=tmp_path / "aoi.geojson")
        assert (labels[expected == 1] == 1).all(), name
    aoi = read_vector(tmp_path / "aoi.geojson")
    assert aoi.crs.to_epsg() == 4326 and len(aoi) == 1


def test_label_raster_on_other_grid(tmp_path):
    grid = make_grid()
    coarse = make_grid(width=24, height=20, res=6.0)
    lab = expected_labels(grid)[::2, ::2].copy()
    write_raster(tmp_path / "lab.tif", lab, coarse, nodata=255)
    out = load_labels(tmp_path / "lab.tif", grid)
    assert out.shape == grid.shape
    assert (out[::2, ::2] == lab).all()
    write_raster(tmp_path / "bad.tif", np.full(grid.shape, 7, np.uint8), grid, nodata=255)
    with pytest.raises(LabelError, match="other than 1"):
        load_labels(tmp_path / "bad.tif", grid)


def test_bad_vectors(tmp_path):
    with pytest.raises(InputFileNotFoundError):
        read_vector(tmp_path / "missing.geojson")
    (tmp_path / "x.geojson").write_text("{not json")
    with pytest.raises(InvalidVectorError, match="not valid JSON"):
        read_vector(tmp_path / "x.geojson")
    (tmp_path / "y.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(InvalidVectorError, match="no features"):
        read_vector(tmp_path / "y.geojson")
    (tmp_path / "z.gpkg").write_text("garbage")
    with pytest.raises(InvalidVectorError):
        read_vector(tmp_path / "z.gpkg")


def test_check_labels():
    with pytest.raises(LabelError, match="no labelled pixel"):
        check_labels(np.full((3, 3), 255, np.uint8))
    with pytest.raises(LabelError, match="every labelled pixel is crop"):
        check_labels(np.ones((3, 3), np.uint8))
    check_labels(np.array([[0, 1]], np.uint8))


def test_dwr_ground_truth_crop_fraction():
    folder = shared_path("planet_sacramento_dwr2015")
    truth = read_vector(folder / "ground-truth-train.geojson")
    assert len(truth) == 221 and "style" not in truth.columns
    aoi = read_vector(folder / "aoi-train.geojson")
    utm = aoi.estimate_utm_crs()
    from cropseg.grid import Grid

    grid = Grid.from_bounds(tuple(aoi.to_crs(utm).total_bounds), 3.0, utm)
    labels = rasterize_labels(truth, grid, aoi=aoi)
    inside = labels != 255
    assert labels[inside].mean() == pytest.approx(0.842, abs=0.01)  # PROVENANCE.md: crop fraction 0.842
