import numpy as np
import rasterio
from affine import Affine

from cropseg.grid import Grid
from cropseg.raster_io import CLASS_COG_OPTIONS, COG_OPTIONS, cog_options, write_raster
from cropseg.testing import TEST_CRS


def test_class_map_overviews_take_the_majority_class(tmp_path):
    # crop / non-crop speckled with nodata (e.g. clouds): an overview pixel is the most frequent class of the
    # 2 x 2 pixels it covers, nodata only where all of them are (GDAL's default, cubic, drops or invents classes)
    side = 1100
    rng = np.random.default_rng(0)
    classes = (rng.random((side, side)) < 0.5).astype(np.uint8)
    classes[rng.random((side, side)) < 0.1] = 255
    path = write_raster(tmp_path / "classes.tif", classes, Grid(Affine(3.0, 0, 6e5, 0, -3.0, 4.2e6), TEST_CRS, side,
                                                                side), nodata=255)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == [2, 4]
        ov = ds.read(1, out_shape=(side // 2, side // 2))
    blocks = classes.reshape(side // 2, 2, side // 2, 2).transpose(0, 2, 1, 3).reshape(side // 2, side // 2, 4)
    crop, noncrop = (blocks == 1).sum(axis=2), (blocks == 0).sum(axis=2)
    assert set(np.unique(ov)) <= {0, 1, 255}
    assert (ov[crop > noncrop] == 1).all() and (ov[noncrop > crop] == 0).all()
    assert (ov == 255).sum() == (crop + noncrop == 0).sum()


def test_other_rasters_keep_the_default_resampling():
    assert cog_options("uint8") is CLASS_COG_OPTIONS and CLASS_COG_OPTIONS["RESAMPLING"] == "MODE"
    assert cog_options("uint16") is COG_OPTIONS and "RESAMPLING" not in COG_OPTIONS
