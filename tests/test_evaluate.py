import json

import numpy as np
import pytest

from cropseg.errors import InvalidRasterError, LabelError
from cropseg.evaluate import evaluate_files, format_metrics, pixel_metrics
from cropseg.raster_io import write_raster
from cropseg.testing import field_polygons, make_grid


def test_pixel_metrics_known_values():
    truth = np.array([[1, 1, 1, 1, 0, 0, 0, 0, 255]], np.uint8)
    pred = np.array([[1, 1, 1, 0, 1, 0, 0, 0, 1]], np.uint8)
    m = pixel_metrics(pred, truth)
    rep = m["report"]
    assert rep["crop"]["precision"] == pytest.approx(0.75) and rep["crop"]["recall"] == pytest.approx(0.75)
    assert rep["non-crop"]["support"] == 4 and m["pixels"] == 8
    assert m["crop_iou"] == pytest.approx(3 / 5)
    assert m["confusion"]["matrix"] == [[3, 1], [1, 3]]
    text = format_metrics(m)
    assert "weighted avg" in text and "crop IoU: 0.600" in text


def test_no_overlap():
    with pytest.raises(LabelError):
        pixel_metrics(np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8))


def test_evaluate_files_with_vector_truth(tmp_path):
    grid = make_grid()
    from cropseg.label import rasterize_labels

    truth = rasterize_labels(field_polygons(grid), grid)
    write_raster(tmp_path / "pred.tif", truth, grid, nodata=255)
    field_polygons(grid).to_file(tmp_path / "t.gpkg", driver="GPKG")
    m = evaluate_files(tmp_path / "pred.tif", tmp_path / "t.gpkg")
    assert m["report"]["weighted avg"]["f1-score"] == pytest.approx(1.0)
    json.dumps(m)
    write_raster(tmp_path / "bad.tif", np.full(grid.shape, 9, np.uint8), grid, nodata=None)
    with pytest.raises(InvalidRasterError, match="cropseg prediction"):
        evaluate_files(tmp_path / "bad.tif", tmp_path / "t.gpkg")
