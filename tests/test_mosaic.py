import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from cropseg.config import Config, TrainConfig
from cropseg.errors import InputError, InputFileNotFoundError
from cropseg.grid import Grid
from cropseg.label import NODATA
from cropseg.models import load_model
from cropseg.mosaic import build_mosaic, expand_inputs, mosaic_grid, predict_many
from cropseg.raster_io import write_raster
from cropseg.streaming import partial_folder
from cropseg.testing import TEST_CRS, TEST_ORIGIN, make_grid, write_test_scene
from cropseg.train import train_from_files


def _grid(dc, dr, w=48, h=40):
    x0, y0 = TEST_ORIGIN
    return Grid(Affine(3.0, 0, x0 + 3.0 * dc, 0, -3.0, y0 - 3.0 * dr), TEST_CRS, w, h)


def _udm(grid, cloud_cols):
    udm = np.zeros((8, *grid.shape), np.uint8)
    udm[0] = 1
    udm[0, :, cloud_cols] = 0
    udm[5, :, cloud_cols] = 1
    return udm


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mosaic")
    a = write_test_scene(tmp / "acq" / "A", grid=_grid(0, 0))
    write_test_scene(tmp / "acq" / "B", grid=_grid(16, 8), seed=1)
    # A: cloud over its last 10 columns (clear fraction 38/48); B: cloud over its first 24 (24/48)
    write_raster(tmp / "acq" / "A" / "image_udm2.tif", _udm(_grid(0, 0), slice(38, 48)), _grid(0, 0), nodata=None)
    write_raster(tmp / "acq" / "B" / "image_udm2.tif", _udm(_grid(16, 8), slice(0, 24)), _grid(16, 8), nodata=None)
    (tmp / "acq" / "manifest.json").write_text(json.dumps({"provider": "planet", "scenes": ["A", "B"]}))
    cfg = Config().replace(train=TrainConfig(cv_block=8, k_values=(3, 5)))
    train_from_files(a["image"], a["truth"], tmp / "model", config=cfg)
    return tmp


def test_inputs_expand_from_manifests_and_folders(scenes, tmp_path):
    acq = scenes / "acq"
    assert [p.name for p in expand_inputs([acq])] == ["A", "B"]
    assert [p.name for p in expand_inputs([acq / "manifest.json"])] == ["A", "B"]
    assert [p.name for p in expand_inputs([acq / "A", acq / "A" / "image.tif"])] == ["A", "image.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileNotFoundError, match="holds no scene"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(InputFileNotFoundError):
        expand_inputs([tmp_path / "nope"])


def test_one_output_per_scene(scenes, tmp_path):
    res = predict_many(scenes / "model", [scenes / "acq"], tmp_path / "preds")
    assert [p.name for p in res.outputs] == ["A.tif", "B.tif"]
    with rasterio.open(res.outputs[1]) as ds:
        assert ds.transform == _grid(16, 8).transform
        assert (ds.read(1)[:, :24] == NODATA).all() and (ds.read(1)[:, 24:] != NODATA).all()
    assert res.results[0].clear_fraction == pytest.approx(38 / 48)
    assert res.results[1].clear_fraction == pytest.approx(24 / 48)
    with pytest.raises(InputError, match="folder"):
        predict_many(scenes / "model", [scenes / "acq"], tmp_path / "x.tif")


def test_mosaic_takes_each_pixel_from_the_clearest_scene_with_data(scenes, tmp_path):
    per = predict_many(scenes / "model", [scenes / "acq"], tmp_path / "per")
    res = predict_many(scenes / "model", [scenes / "acq"], tmp_path / "m.tif", mosaic=True)
    assert res.order == [0, 1]  # A is clearer
    with rasterio.open(tmp_path / "m.tif") as ds, rasterio.open(per.outputs[0]) as a, \
            rasterio.open(per.outputs[1]) as b:
        assert ds.transform == _grid(0, 0).transform and ds.shape == (48, 64)
        assert ds.tags()["CROPSEG_MOSAIC_ORDER"].endswith("A,001_B")
        m, pa, pb = ds.read(1), a.read(1), b.read(1)
    expected = np.full((48, 64), NODATA, np.uint8)
    expected[8:48, 16:64] = pb
    inside_a = expected[0:40, 0:48]
    take = pa != NODATA
    inside_a[take] = pa[take]
    assert np.array_equal(m, expected)
    # where A is cloudy and B clear, B fills in; where both are cloudy, nodata
    assert (m[8:40, 40:48] == pb[0:32, 24:32]).all() and (m[8:40, 40:48] != NODATA).all()
    assert not partial_folder(tmp_path / "m.tif").exists()


class _Stop(Exception):
    pass


def test_an_interrupted_mosaic_resumes_finished_scenes(scenes, tmp_path):
    out = tmp_path / "m.tif"
    calls = []

    def stop(description, done, total):
        calls.append(description)
        if description == "Mosaicking":
            raise _Stop

    with pytest.raises(_Stop):
        predict_many(scenes / "model", [scenes / "acq"], out, mosaic=True, progress=stop)
    assert not out.exists()
    seen = []
    predict_many(scenes / "model", [scenes / "acq"], out, mosaic=True,
                 progress=lambda d, i, n: seen.append(d))
    assert "Predicting" not in seen and out.exists()
    ref = tmp_path / "ref.tif"
    predict_many(scenes / "model", [scenes / "acq"], ref, mosaic=True)
    assert out.read_bytes() == ref.read_bytes()


def test_mosaic_grid_and_reprojected_scenes(scenes, tmp_path):
    g1 = make_grid(10, 10)
    g2 = Grid(Affine(3.0, 0, g1.transform.c + 1.5, 0, -3.0, g1.transform.f), TEST_CRS, 10, 10)  # off-lattice
    m = mosaic_grid([g1, g2])
    assert m.transform == g1.transform and m.shape == (10, 11)
    # a prediction in another CRS is resampled onto the first grid
    p1 = write_raster(tmp_path / "p1.tif", np.full((10, 10), NODATA, np.uint8), g1, nodata=255)
    utm11 = Grid.from_bounds(
        __import__("pyproj").Transformer.from_crs(TEST_CRS, "EPSG:32611", always_xy=True)
        .transform_bounds(*g1.bounds), 3.0, "EPSG:32611")
    p2 = write_raster(tmp_path / "p2.tif", np.ones(utm11.shape, np.uint8), utm11, nodata=255)
    build_mosaic([p1, p2], [1.0, 0.5], tmp_path / "m.tif", staging=tmp_path / "stage")
    with rasterio.open(tmp_path / "m.tif") as ds:
        # on the first grid's lattice, covering both; g1's pixels filled from the other scene
        assert (ds.transform.c - g1.transform.c) % 3 == 0 and (ds.transform.f - g1.transform.f) % 3 == 0
        col, row = ~ds.transform @ (g1.transform.c, g1.transform.f)
        inner = ds.read(1)[round(row) + 1 : round(row) + 9, round(col) + 1 : round(col) + 9]
        assert (inner == 1).all()


def test_metadata_with_several_scenes_is_refused(scenes, tmp_path):
    with pytest.raises(InputError, match="one scene"):
        predict_many(load_model(scenes / "model"), [scenes / "acq"], tmp_path / "o", udm2=tmp_path / "u.tif")
