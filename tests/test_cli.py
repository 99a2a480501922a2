"""The CLI as a user runs it: exit codes, messages, and no partial files on bad input."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cropseg.cli import app
from cropseg.raster_io import write_raster
from cropseg.testing import make_grid, write_test_scene

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    files = write_test_scene(tmp / "scene")
    cfg = tmp / "cfg.toml"
    cfg.write_text("[train]\nk_values = [3, 5]\ncv_block = 8\n")
    res = run("train", "--image", files["image"], "--labels", files["truth"], "--out", tmp / "model", "--config", cfg)
    assert res.exit_code == 0, res.output
    return tmp, files


def test_train_predict_evaluate_polygonize(workspace):
    tmp, files = workspace
    res = run("predict", "--model", tmp / "model", "--image", tmp / "scene", "--out", tmp / "pred.tif")
    assert res.exit_code == 0, res.output
    res = run("evaluate", "--pred", tmp / "pred.tif", "--labels", files["truth"], "--json", tmp / "m.json")
    assert res.exit_code == 0, res.output
    assert "weighted avg" in res.output and "crop IoU" in res.output
    m = json.loads((tmp / "m.json").read_text())
    assert m["report"]["weighted avg"]["f1-score"] > 0.9
    res = run("polygonize", "--pred", tmp / "pred.tif", "--out", tmp / "f.geojson", "--min-area", "100")
    assert res.exit_code == 0, res.output
    assert (tmp / "f.geojson").exists() and (tmp / "f.gpkg").exists()
    res = run("evaluate", "--pred", tmp / "pred.tif", "--labels", files["truth"], "--ci", "--polygons",
              tmp / "f.geojson", "--json", tmp / "m2.json")
    assert res.exit_code == 0, res.output
    m2 = json.loads((tmp / "m2.json").read_text())
    low, high = m2["bootstrap"]["metrics"]["crop_f1"]["low"], m2["bootstrap"]["metrics"]["crop_f1"]["high"]
    assert 0 < low <= m2["report"]["crop"]["f1-score"] <= high <= 1
    assert m2["objects"]["n_truth"] == 2  # field 1 and the MultiPolygon field 2 are crop; urban is not


def test_predict_refine_flags(workspace, tmp_path):
    from cropseg.config import PredictConfig
    from cropseg.models import load_model
    from cropseg.predict import REFINED_KINDS, predict_scene, with_refinement
    from cropseg.raster_io import read, read_info
    from cropseg.scene import open_scene

    tmp, _ = workspace
    trained = load_model(tmp / "model")
    # a noisy copy of the test scene, so that the model's pixels disagree within fields
    noisy = tmp_path / "noisy"
    files = write_test_scene(noisy)
    dn, grid = read(files["image"]), read_info(files["image"]).grid
    rng = np.random.default_rng(5)
    dn = np.clip(dn * rng.normal(1.0, 0.3, dn.shape), 1, 65535).astype(np.uint16)
    write_raster(files["image"], dn, grid, nodata=0)
    scene = open_scene(noisy)
    for flag, mode in (("--refine", "on"), ("--no-refine", "off")):
        res = run("predict", "--model", tmp / "model", "--image", noisy, "--out", tmp_path / f"{mode}.tif", flag)
        assert res.exit_code == 0, res.output
        expected = predict_scene(with_refinement(trained, PredictConfig(refine=mode)), scene, tmp_path / f"e{mode}.tif")
        assert np.array_equal(read(tmp_path / f"{mode}.tif")[0], read(expected)[0])
    res = run("predict", "--model", tmp / "model", "--image", noisy, "--out", tmp_path / "auto.tif")
    assert res.exit_code == 0, res.output
    assert not np.array_equal(read(tmp_path / "on.tif")[0], read(tmp_path / "off.tif")[0])
    expected_auto = "on" if trained.model.kind in REFINED_KINDS else "off"
    assert np.array_equal(read(tmp_path / "auto.tif")[0], read(tmp_path / f"{expected_auto}.tif")[0])


def _assert_clean_failure(res, tmp, match, outputs=()):
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and match in res.output
    assert "Traceback" not in res.output
    for out in outputs:
        assert not out.exists()
    assert not [p for p in tmp.rglob(".*part*")]


def test_bad_inputs_exit_1_without_partial_files(workspace, tmp_path):
    tmp, files = workspace
    model_out = tmp_path / "m"
    res = run("train", "--image", tmp_path / "missing.tif", "--labels", files["truth"], "--out", model_out)
    _assert_clean_failure(res, tmp_path, "does not exist", [model_out])

    # no CRS
    import rasterio
    from affine import Affine

    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=8, height=8, count=4, dtype="uint16",
                       transform=Affine(3, 0, 0, 0, -3, 0)) as ds:
        ds.write(np.ones((4, 8, 8), np.uint16))
    res = run("predict", "--model", tmp / "model", "--image", tmp_path / "nocrs.tif", "--out", tmp_path / "p.tif")
    _assert_clean_failure(res, tmp_path, "no CRS", [tmp_path / "p.tif"])

    # wrong band count
    write_raster(tmp_path / "two.tif", np.ones((2, 8, 8), np.uint16), make_grid(8, 8), nodata=0)
    res = run("train", "--image", tmp_path / "two.tif", "--labels", files["truth"], "--out", model_out,
              "--product", "analytic_sr")
    _assert_clean_failure(res, tmp_path, "4 (blue, green, red, nir)", [model_out])

    # AOI not overlapping the image
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}))
    res = run("train", "--image", files["image"], "--labels", files["truth"], "--aoi", far, "--out", model_out)
    _assert_clean_failure(res, tmp_path, "does not overlap", [model_out])

    # a single class
    res = run("train", "--image", files["image"], "--labels", files["truth"], "--crop-classes", "X", "--out", model_out)
    _assert_clean_failure(res, tmp_path, "every labelled pixel is non-crop", [model_out])

    # empty labels
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    res = run("train", "--image", files["image"], "--labels", empty, "--out", model_out)
    _assert_clean_failure(res, tmp_path, "no features", [model_out])

    # not a model
    res = run("predict", "--model", tmp / "scene", "--image", files["image"], "--out", tmp_path / "p.tif")
    _assert_clean_failure(res, tmp_path, "not a cropseg model", [tmp_path / "p.tif"])

    # bad config key
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nkk = 1\n")
    res = run("train", "--image", files["image"], "--labels", files["truth"], "--out", model_out, "--config", bad)
    _assert_clean_failure(res, tmp_path, "unknown config key", [model_out])


def test_usage_error_exits_2(workspace):
    tmp, files = workspace
    res = run("predict", "--model", tmp / "model", "--image", files["image"], "--out", "x.tif", "--product", "nope")
    assert res.exit_code == 2


def test_synth_procedural_then_train_on_it(tmp_path):
    res = run("synth", "--out", tmp_path / "s", "--size-m", 450, "--seed", 3, "--clouds", 0.2)
    assert res.exit_code == 0, res.output
    for name in ("scene.tif", "scene_metadata.xml", "udm2.tif", "labels.tif", "actual.tif", "manifest.json"):
        assert (tmp_path / "s" / name).exists(), name
    res = run("synth", "--out", tmp_path / "bad", "--change-rate", 2)
    _assert_clean_failure(res, tmp_path, "change", [tmp_path / "bad" / "scene.tif"])
