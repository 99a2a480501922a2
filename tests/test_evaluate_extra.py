import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from cropseg.errors import LabelError
from cropseg.evaluate import (
    bootstrap_ci,
    bootstrap_compare,
    format_bootstrap,
    format_object_metrics,
    object_metrics,
    pixel_metrics,
)


def _truth(rows: int = 128, cols: int = 128) -> np.ndarray:
    truth = np.zeros((rows, cols), dtype=np.uint8)
    truth[:, : cols // 2] = 1
    truth[:4] = 255
    return truth


def _noisy(truth: np.ndarray, rate: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flip = rng.random(truth.shape) < rate
    out = truth.copy()
    out[flip & (truth != 255)] = 1 - truth[flip & (truth != 255)]
    return out


def test_bootstrap_perfect_prediction_has_degenerate_interval() -> None:
    truth = _truth()
    ci = bootstrap_ci(truth, truth, block=32, n=50)
    for m in ci["metrics"].values():
        assert m["value"] == m["low"] == m["high"] == 1.0
    assert ci["tiles"] == 16 and ci["n"] == 50


def test_bootstrap_point_values_match_pixel_metrics_and_lie_in_interval() -> None:
    truth = _truth()
    pred = _noisy(truth, 0.2)
    ci = bootstrap_ci(pred, truth, block=16, n=100, seed=3)
    pm = pixel_metrics(pred, truth)
    m = ci["metrics"]
    assert m["crop_f1"]["value"] == pytest.approx(pm["report"]["crop"]["f1-score"])
    assert m["crop_iou"]["value"] == pytest.approx(pm["crop_iou"])
    assert m["f1_weighted"]["value"] == pytest.approx(pm["report"]["weighted avg"]["f1-score"])
    assert m["accuracy"]["value"] == pytest.approx(pm["report"]["accuracy"])
    for v in m.values():
        assert v["low"] <= v["value"] <= v["high"]
        assert v["high"] - v["low"] > 0
    assert bootstrap_ci(pred, truth, block=16, n=100, seed=3) == ci  # seeded
    assert "95% CI" in format_bootstrap(ci)


def test_block_bootstrap_is_wider_than_pixel_bootstrap_for_clustered_errors() -> None:
    truth = _truth()
    pred = truth.copy()
    pred[64:96, 0:32] = 0  # one whole field wrong: errors are clustered
    pixelwise = bootstrap_ci(pred, truth, block=1, n=200)
    blocked = bootstrap_ci(pred, truth, block=32, n=200)
    width = lambda c: c["metrics"]["crop_f1"]["high"] - c["metrics"]["crop_f1"]["low"]  # noqa: E731
    assert width(blocked) > 3 * width(pixelwise)


def test_bootstrap_compare_prefers_the_better_prediction() -> None:
    truth = _truth()
    good, bad = _noisy(truth, 0.05, seed=1), _noisy(truth, 0.3, seed=2)
    cmp = bootstrap_compare(good, bad, truth, block=16, n=100)
    f1 = cmp["metrics"]["crop_f1"]
    assert f1["diff"] > 0 and f1["low"] > 0 and f1["p_a_better"] == 1.0
    assert f1["a"] > f1["b"]


def test_bootstrap_rejects_bad_input() -> None:
    truth = _truth()
    with pytest.raises(ValueError):
        bootstrap_ci(truth[:10], truth)
    with pytest.raises(LabelError):
        bootstrap_ci(np.full_like(truth, 255), truth)
    with pytest.raises(ValueError):
        bootstrap_ci(truth, truth, level=1.5)
    with pytest.raises(ValueError):
        bootstrap_ci(truth, truth, block=0)


def _row(x0: float, width: float = 100.0) -> object:
    return box(x0, 0, x0 + width, 100)


def _fields() -> gpd.GeoDataFrame:
    # five 100 x 100 m fields side by side: A B C D E
    return gpd.GeoDataFrame(geometry=[_row(630_000 + i * 100.0) for i in range(5)], crs="EPSG:32610")


def _pred() -> gpd.GeoDataFrame:
    x = 630_000.0
    geoms = [
        _row(x + 0),  # A exactly
        box(x + 100, 0, x + 133.3, 100), box(x + 133.3, 0, x + 166.6, 100), box(x + 166.6, 0, x + 200, 100),  # B split
        box(x + 200, 0, x + 500, 100),  # C, D and E merged
    ]
    return gpd.GeoDataFrame(geometry=geoms, crs="EPSG:32610")


def test_object_metrics_counts_matches_splits_and_merges() -> None:
    m = object_metrics(_pred(), _fields())
    assert (m["n_pred"], m["n_truth"], m["matched"]) == (5, 5, 1)
    assert m["precision"] == pytest.approx(0.2) and m["recall"] == pytest.approx(0.2)
    assert m["f1"] == pytest.approx(0.2)
    assert m["mean_matched_iou"] == pytest.approx(1.0)
    assert (m["over_segmented"], m["split_parts"]) == (1, 3)
    assert (m["under_segmented"], m["merged_fields"]) == (1, 3)
    assert m["matches"] == [{"pred": 0, "truth": 0, "iou": 1.0}]
    assert "object precision 0.200" in format_object_metrics(m)


def test_object_metrics_threshold_and_crs() -> None:
    truth = _fields()
    # the merged polygon has IoU 1/3 with each of C, D, E: a low threshold matches one of them
    low = object_metrics(_pred(), truth, iou=0.3)
    assert low["matched"] == 3  # A, one third of B with B, the merge with one field
    # any CRS: predicted polygons in lon / lat give the same result
    same = object_metrics(_pred().to_crs("EPSG:4326"), truth)
    assert same["matched"] == 1 and same["over_segmented"] == 1 and same["under_segmented"] == 1


def test_object_metrics_perfect_and_empty() -> None:
    truth = _fields()
    perfect = object_metrics(truth, truth)
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    empty = object_metrics(truth.iloc[:0], truth)
    assert empty["matched"] == 0 and empty["precision"] == 0.0 and empty["recall"] == 0.0
    with pytest.raises(ValueError):
        object_metrics(truth, truth, iou=0)
