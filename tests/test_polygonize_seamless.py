import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.ndimage import median_filter

from cropseg.label import CROP, NODATA, NONCROP
from cropseg.polygonize import denoise, polygonize_file, polygonize_raster, polygons_from_mask
from cropseg.raster_io import write_raster
from cropseg.testing import make_grid


def _median_reference(pred, size):
    """The original denoise: scipy's median filter on the crop mask."""
    crop = (pred == CROP).astype(np.uint8)
    out = np.where(median_filter(crop, size=size, mode="nearest") == 1, CROP, NONCROP).astype(np.uint8)
    out[pred == NODATA] = NODATA
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 30), cols=st.integers(1, 30),
       size=st.sampled_from([1, 3, 5, 7]))
def test_denoise_equals_a_median_filter(seed, rows, cols, size):
    pred = np.random.default_rng(seed).choice(np.array([0, 1, 255], np.uint8), (rows, cols), p=[0.45, 0.45, 0.1])
    assert np.array_equal(denoise(pred, size), _median_reference(pred, size))


def _same_polygons(a, b):
    assert len(a) == len(b)
    ga, gb = shapely.union_all(list(a.geometry)), shapely.union_all(list(b.geometry))
    assert shapely.symmetric_difference(ga, gb).area == pytest.approx(0, abs=1e-6)
    assert sorted(a["area_m2"]) == pytest.approx(sorted(b["area_m2"]))


def test_a_field_across_tile_borders_is_one_polygon(tmp_path):
    grid = make_grid(60, 50)
    pred = np.zeros(grid.shape, np.uint8)
    pred[5:45, 8:52] = CROP  # one field over the 16 px window borders (rows and columns)
    pred[20:30, 20:40] = NONCROP  # a farmstead: a hole crossing a border
    pred[12:14, 10:50] = NONCROP  # a track inside the field, over a border: a second hole
    pred[0:3, :] = NODATA
    pred[30:34, 54:58] = CROP  # a small separate field
    path = write_raster(tmp_path / "pred.tif", pred, grid, nodata=255)
    polys = polygonize_raster(path, median_size=3, simplify=0, min_area=0, tile_size=16)
    whole = polygons_from_mask(denoise(pred, 3), grid, simplify=0, min_area=0)
    _same_polygons(polys, whole)
    big = polys.geometry.iloc[0]
    assert big.geom_type == "Polygon" and len(big.interiors) == 2
    assert len(polys) == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), tile=st.integers(3, 25), size=st.sampled_from([1, 3, 5]))
def test_windowed_polygons_equal_whole_image_polygons(tmp_path, seed, tile, size):
    rng = np.random.default_rng(seed)
    grid = make_grid(41, 37)
    # blobby fields: smoothed noise, thresholded, with some nodata
    noise = rng.random(grid.shape)
    from scipy.ndimage import uniform_filter

    pred = (uniform_filter(noise, 5) > 0.5).astype(np.uint8)
    pred[rng.random(grid.shape) < 0.03] = NODATA
    path = write_raster(tmp_path / f"p{seed}_{tile}_{size}.tif", pred, grid, nodata=255)
    polys = polygonize_raster(path, median_size=size, simplify=0, min_area=0, tile_size=tile)
    whole = polygons_from_mask(denoise(pred, size), grid, simplify=0, min_area=0)
    _same_polygons(polys, whole)


def test_polygonize_file_keeps_its_outputs_and_simplifies_after_merging(tmp_path):
    grid = make_grid(64, 64)
    pred = np.zeros(grid.shape, np.uint8)
    pred[4:60, 4:30] = CROP
    path = write_raster(tmp_path / "pred.tif", pred, grid, nodata=255)
    seen = []
    polys = polygonize_file(path, tmp_path / "f.geojson", median_size=5, min_area=100, tile_size=16,
                            progress=lambda d, i, n: seen.append(i))
    assert (tmp_path / "f.geojson").exists() and (tmp_path / "f.gpkg").exists()
    whole = polygons_from_mask(denoise(pred, 5), grid, min_area=100)
    assert len(polys) == 1 and polys.geometry.iloc[0].equals(whole.geometry.iloc[0])
    assert polys["area_m2"].iloc[0] == whole["area_m2"].iloc[0]
    assert seen[-1] == 16
