import json

import numpy as np
import pytest

from cropseg.errors import InputError, InputFileNotFoundError, InvalidRasterError
from cropseg.raster_io import write_raster
from cropseg.scene import find_scene_files, open_scene
from cropseg.testing import TEST_COEFFICIENTS, make_grid, write_test_scene


def test_discovers_metadata_beside_image(tmp_path):
    files = write_test_scene(tmp_path)
    scene = open_scene(files["image"])
    assert scene.metadata == files["metadata"] and scene.product == "analytic"
    assert scene.coefficients == TEST_COEFFICIENTS
    assert find_scene_files(tmp_path)[0] == files["image"]


def test_reflectance_and_udm2_mask(tmp_path):
    files = write_test_scene(tmp_path)
    grid = make_grid()
    udm = np.zeros((8, *grid.shape), np.uint8)
    udm[0] = 1
    udm[5, :5, :] = 1  # cloud on the top rows
    udm[0, :5, :] = 0
    write_raster(tmp_path / "image_udm2.tif", udm, grid, nodata=None)
    scene = open_scene(files["image"])
    assert scene.udm2 is not None
    valid = scene.read_valid()
    assert not valid[:5].any() and valid[5:].all()
    refl = scene.read_reflectance()
    assert refl.dtype == np.float32 and 0.3 < refl[3, 5, 5] < 0.6  # crop NIR


def test_product_choices(tmp_path):
    files = write_test_scene(tmp_path)
    files["metadata"].unlink()
    with pytest.raises(InputError, match="radiance or surface reflectance"):
        open_scene(files["image"])
    with pytest.raises(InputError, match="--metadata"):
        open_scene(files["image"], product="analytic")
    sr = open_scene(files["image"], product="analytic_sr")
    assert sr.coefficients is None
    (tmp_path / "manifest.json").write_text(json.dumps({"image": "image.tif", "product": "analytic_sr"}))
    assert open_scene(tmp_path).product == "analytic_sr"


def test_bad_scene_inputs(tmp_path):
    with pytest.raises(InputFileNotFoundError):
        open_scene(tmp_path / "nope.tif")
    files = write_test_scene(tmp_path)
    write_raster(tmp_path / "x_udm2.tif", np.zeros((8, 4, 4), np.uint8), make_grid(4, 4), nodata=None)
    with pytest.raises(InvalidRasterError, match="not on the grid"):
        open_scene(files["image"])
    write_raster(tmp_path / "x_udm2.tif", np.zeros((3, 40, 48), np.uint8), make_grid(), nodata=None)
    with pytest.raises(InvalidRasterError, match="UDM2 has 8"):
        open_scene(files["image"])
    (tmp_path / "not.tif").write_text("hello")
    with pytest.raises(InvalidRasterError, match="not a raster"):
        open_scene(tmp_path / "not.tif", product="analytic_sr", discover=False)
