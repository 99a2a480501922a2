import numpy as np
import pytest
import rasterio

from cropseg.errors import InvalidRasterError
from cropseg.models import load_model
from cropseg.predict import predict_from_files, predict_scene
from cropseg.raster_io import write_raster
from cropseg.scene import open_scene
from cropseg.testing import expected_labels, make_grid, write_test_scene


@pytest.fixture
def trained(tiny_model):
    return tiny_model


def test_prediction_is_a_cog_on_the_input_grid(trained):
    tmp, files = trained
    out = predict_from_files(tmp / "model", files["image"], tmp / "pred.tif")
    with rasterio.open(out) as ds, rasterio.open(files["image"]) as src:
        assert ds.dtypes == ("uint8",) and ds.nodata == 255 and ds.count == 1
        assert ds.transform == src.transform and ds.crs == src.crs and ds.shape == src.shape
        assert ds.tags()["CROPSEG_CODING"].startswith("1=crop")
        pred = ds.read(1)
    with rasterio.Env():
        from rasterio.shutil import exists

        assert exists(out)
    assert set(np.unique(pred)) <= {0, 1}
    truth = expected_labels(make_grid())
    assert (pred == truth).mean() > 0.95  # the tiny scene is separable


def test_tiled_equals_whole(trained):
    tmp, files = trained
    model = load_model(tmp / "model")
    scene = open_scene(files["image"])
    predict_scene(model, scene, tmp / "whole.tif", tile_size=512)
    predict_scene(model, scene, tmp / "tiled.tif", tile_size=7)
    with rasterio.open(tmp / "whole.tif") as a, rasterio.open(tmp / "tiled.tif") as b:
        assert (a.read() == b.read()).all()


def test_nodata_and_udm2(trained, tmp_path):
    _, files = trained
    grid = make_grid()
    with rasterio.open(files["image"]) as ds:
        dn = ds.read()
    dn[:, :4, :] = 0  # nodata rows
    write_raster(tmp_path / "img.tif", dn, grid, nodata=0)
    (tmp_path / "img_metadata.xml").write_text(files["metadata"].read_text())
    udm = np.zeros((8, *grid.shape), np.uint8)
    udm[0] = 1
    udm[0, :, :3] = 0
    udm[5, :, :3] = 1  # cloud in the first columns
    write_raster(tmp_path / "img_udm2.tif", udm, grid, nodata=None)
    out = predict_from_files(trained[0] / "model", tmp_path / "img.tif", tmp_path / "p.tif")
    with rasterio.open(out) as ds:
        pred = ds.read(1)
    assert (pred[:4] == 255).all() and (pred[:, :3] == 255).all()
    assert (pred[4:, 3:] != 255).all()


def test_band_count_mismatch_leaves_no_file(trained, tmp_path):
    tmp, _ = trained
    write_raster(tmp_path / "three.tif", np.ones((3, 8, 8), np.uint16), make_grid(8, 8), nodata=0)
    with pytest.raises(InvalidRasterError, match="bands"):
        predict_from_files(tmp / "model", tmp_path / "three.tif", tmp_path / "out.tif", product="analytic_sr")
    assert not (tmp_path / "out.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tif")]


def test_cli_predicts_several_scenes_a_mosaic_and_checks_its_options(trained, tmp_path):
    from typer.testing import CliRunner

    from cropseg.cli import app

    tmp, files = trained
    other = write_test_scene(tmp_path / "other", seed=5)

    def run(*args):
        return CliRunner().invoke(app, ["predict", "--model", str(tmp / "model"), *map(str, args)])

    res = run("--image", files["image"], "--image", other["image"], "--out", tmp_path / "preds", "--workers", 1)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == ["image.tif", "image_2.tif"]
    res = run("--image", files["image"], "--image", other["image"], "--out", tmp_path / "m.tif", "--mosaic",
              "--no-resume", "--tile-size", 16)
    assert res.exit_code == 0, res.output
    assert "Mosaic of 2 scene(s)" in res.output
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.shape == (40, 48) and "CROPSEG_MOSAIC_RULE" in ds.tags()
    assert run("--image", files["image"], "--out", tmp_path / "x.tif", "--scheduler", "spark").exit_code == 2
    res = run("--image", files["image"], "--out", tmp_path / "x.tif", "--dask-address", "tcp://127.0.0.1:1")
    assert res.exit_code == 2
    res = run("--image", files["image"], "--image", other["image"], "--out", tmp_path / "y.tif")
    assert res.exit_code == 1 and "make --out a folder" in res.output
    assert not (tmp_path / "x.tif").exists() and not (tmp_path / "y.tif").exists()
