import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Point, box
from typer.testing import CliRunner

from cropseg.cli import app
from cropseg.config import Config
from cropseg.errors import InvalidVectorError, NoOverlapError
from cropseg.fields import accumulate, decide, decide_fields, field_ids, field_means
from cropseg.grid import Window
from cropseg.models import load_model
from cropseg.predict import with_refinement
from cropseg.scene import open_scene
from cropseg.testing import field_polygons, make_grid

NAN = np.nan


def test_each_field_takes_its_mean_and_other_pixels_keep_their_own():
    proba = np.array([[0.2, 0.9, 0.4, NAN],
                      [0.8, 0.5, 0.3, 0.7],
                      [0.1, NAN, 0.6, 0.45]], np.float32)
    ids = np.array([[1, 1, 2, 3],
                    [1, 1, 2, 0],
                    [0, 1, 2, 0]], np.int32)
    totals = np.zeros((2, 4))
    accumulate(totals, proba, ids)
    means = field_means(totals)
    np.testing.assert_allclose(means[1:3], [0.6, 13 / 30], rtol=1e-6)
    assert np.isnan(means[0]) and np.isnan(means[3])  # outside, and a field without a valid pixel
    out = decide(proba, ids, means, threshold=0.5)
    np.testing.assert_array_equal(out, [[1, 1, 0, 255],
                                        [1, 1, 0, 1],
                                        [0, 255, 0, 0]])


def test_field_sums_do_not_depend_on_the_tiling():
    rng = np.random.default_rng(0)
    proba = rng.random((30, 40)).astype(np.float32)
    proba[rng.random(proba.shape) < 0.1] = NAN
    ids = rng.integers(0, 6, proba.shape).astype(np.int32)
    whole = np.zeros((2, 6))
    accumulate(whole, proba, ids)
    tiled = np.zeros((2, 6))
    for r in range(0, 30, 7):
        for c in range(0, 40, 9):
            accumulate(tiled, proba[r : r + 7, c : c + 9], ids[r : r + 7, c : c + 9])
    np.testing.assert_allclose(tiled, whole)


def test_field_ids_of_a_window_are_the_whole_grids_cut():
    grid = make_grid()
    fields = field_polygons(grid).to_crs(grid.crs)
    whole = field_ids(fields, grid, Window(0, 0, grid.width, grid.height))
    assert set(np.unique(whole)) == {0, 1, 2, 3}
    assert whole[10, 10] == 0 and whole[5, 5] == 1 and whole[30, 30] == 2 and whole[30, 10] == 3  # hole, F, V, U
    window = Window(5, 7, 30, 20)
    np.testing.assert_array_equal(field_ids(fields, grid, window), whole[window.slices])


@pytest.fixture
def trained(tiny_model):
    return tiny_model


def test_fields_are_decided_whole_and_tiles_do_not_matter(trained):
    tmp, files = trained
    model = with_refinement(load_model(tmp / "model"), Config().predict)
    scene = open_scene(files["image"])
    fields = field_polygons(scene.grid)  # EPSG:4326: reprojected to the scene
    small = decide_fields(model, scene, fields, tile_size=16)
    large = decide_fields(model, scene, fields, tile_size=64)
    np.testing.assert_array_equal(small.prediction, large.prediction)
    np.testing.assert_allclose(small.fields["crop_probability"], large.fields["crop_probability"], rtol=1e-9)
    assert list(small.fields["decision"]) == ["crop", "crop", "non-crop"]  # F and V are crop, U is urban
    assert small.fields.crs == scene.grid.crs and list(small.fields["CLASS1"]) == ["F", "V", "U"]
    ids = field_ids(small.fields, scene.grid, Window(0, 0, scene.grid.width, scene.grid.height))
    for i, decision in enumerate(small.fields["decision"], start=1):
        assert set(np.unique(small.prediction[ids == i])) == {1 if decision == "crop" else 0}
    assert (small.fields["pixels"] == np.bincount(ids.ravel(), minlength=4)[1:]).all()


def test_files_without_polygons_over_the_image_are_refused(trained):
    tmp, files = trained
    model = load_model(tmp / "model")
    scene = open_scene(files["image"])
    far = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs="EPSG:4326")
    with pytest.raises(NoOverlapError, match="overlaps"):
        decide_fields(model, scene, far)
    points = gpd.GeoDataFrame(geometry=[Point(0, 0)], crs="EPSG:4326")
    with pytest.raises(InvalidVectorError, match="no polygons"):
        decide_fields(model, scene, points)


def test_cli_writes_the_decided_prediction_and_the_fields(trained, tmp_path):
    tmp, files = trained
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["fields", "--model", str(tmp / "model"), "--image", str(files["image"]),
                                 "--fields", str(files["truth"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = gpd.read_file(out / "fields.geojson")
    assert table.crs.to_epsg() == 4326 and list(table["decision"]) == ["crop", "crop", "non-crop"]
    assert gpd.read_file(out / "fields.gpkg").crs == open_scene(files["image"]).grid.crs
    with rasterio.open(out / "prediction.tif") as ds:
        assert ds.nodata == 255 and "per field" in ds.tags()["CROPSEG_DECIDED"]
        assert set(np.unique(ds.read(1))) <= {0, 1, 255}
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs="EPSG:4326").to_file(far, driver="GeoJSON")
    bad = tmp_path / "bad"
    result = runner.invoke(app, ["fields", "--model", str(tmp / "model"), "--image", str(files["image"]),
                                 "--fields", str(far), "--out", str(bad)])
    assert result.exit_code == 1 and "overlaps the image" in result.output
    assert not bad.exists()
