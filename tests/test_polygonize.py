import json

import numpy as np
import pyogrio
import pytest
import shapely

from cropseg.errors import InputError
from cropseg.polygonize import denoise, polygonize_file, polygons_from_mask
from cropseg.raster_io import write_raster
from cropseg.testing import expected_labels, make_grid


def test_denoise_removes_speckle_keeps_nodata():
    pred = np.zeros((20, 20), np.uint8)
    pred[5:15, 5:15] = 1
    pred[2, 2] = 1  # speckle
    pred[9, 9] = 0  # pinhole
    pred[0, :] = 255
    out = denoise(pred, 5)
    assert out[2, 2] == 0 and out[9, 9] == 1 and (out[0] == 255).all()
    with pytest.raises(InputError):
        denoise(pred, 4)


def test_polygons_keep_holes_and_areas():
    grid = make_grid()
    polys = polygons_from_mask(expected_labels(grid), grid, simplify=0, min_area=0)
    assert len(polys) == 3
    holed = polys[polys.geometry.apply(lambda g: len(g.interiors) > 0)]
    assert len(holed) == 1
    assert holed.iloc[0]["area_m2"] == pytest.approx((18 * 16 - 16) * 9)
    big = polygons_from_mask(expected_labels(grid), grid, simplify=3, min_area=1700)
    assert len(big) == 2 and (big["area_m2"] >= 1700).all()  # the 1620 m2 part is dropped
    assert big["area_ha"].iloc[0] == pytest.approx(big["area_m2"].iloc[0] / 1e4, rel=1e-3)


def test_polygonize_file_outputs(tmp_path):
    grid = make_grid()
    write_raster(tmp_path / "pred.tif", expected_labels(grid), grid, nodata=255)
    polys = polygonize_file(tmp_path / "pred.tif", tmp_path / "f.geojson", median_size=1, min_area=0)
    gj = json.loads((tmp_path / "f.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(polys) == 3
    assert "crs" not in gj  # RFC 7946: WGS 84 implied
    lon, lat = gj["features"][0]["geometry"]["coordinates"][0][0]
    assert -122 < lon < -121 and 38 < lat < 39
    for f in gj["features"]:
        assert shapely.geometry.shape(f["geometry"]).is_valid
        assert f["properties"]["area_ha"] > 0
    info = pyogrio.read_info(tmp_path / "f.gpkg", layer="fields")
    assert "32610" in info["crs"]
