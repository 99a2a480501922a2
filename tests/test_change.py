"""The change report on the tiny test scene, where the change is put in by hand."""

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
from typer.testing import CliRunner

from cropseg.change import (
    LOST,
    NEW,
    change_raster,
    change_report,
    change_report_files,
    field_crop_share,
    format_change_summary,
)
from cropseg.cli import app
from cropseg.errors import InputError
from cropseg.label import crop_polygons, rasterize_labels
from cropseg.raster_io import write_raster
from cropseg.testing import field_polygons, make_grid

# field 1 (F): cols 2-20, rows 2-18 with a hole; field 2 (V): two parts; field 3 (U, urban): cols 2-20, rows 24-36
SMALL = {"min_area": 300.0, "median_size": 3, "opening_px": 1}


@pytest.fixture()
def scene():
    grid = make_grid()
    truth = field_polygons(grid)
    labels = rasterize_labels(truth, grid)
    fields = crop_polygons(truth, "CLASS1", ("F", "V"))
    pred = labels.copy()
    pred[2:18, 2:20] = 0  # field 1 lost
    pred[24:36, 2:20] = 1  # the urban block is now crop: new cropland
    return grid, truth, labels, fields, pred


def test_lost_and_new_cropland_are_found(scene):
    grid, _, labels, fields, pred = scene
    rep = change_report(pred, labels, grid, fields, class_field="CLASS1", **SMALL)
    f = rep.fields.set_index("field_id")
    assert rep.fields["area_m2"].is_monotonic_decreasing
    assert list(f.loc[[1, 2], "status"]) == [LOST, "crop"]
    assert f.loc[1, "share_pred_crop"] == 0.0 and f.loc[2, "share_pred_crop"] == 1.0
    assert list(f.loc[[1, 2], "label_class"]) == ["F", "V"]
    ch = rep.changes
    assert sorted(ch["kind"]) == [LOST, NEW]
    lost = ch[ch["kind"] == LOST].iloc[0]
    assert lost["field_id"] == 1 and lost["label_class"] == "F" and lost["confidence"] == 1.0
    new = ch[ch["kind"] == NEW].iloc[0]
    assert new["share_pred_crop"] == 1.0 and new["confidence"] > 0.9
    assert new["area_m2"] == pytest.approx(12 * 18 * 9, rel=0.15)
    assert list(ch["id"]) == [1, 2] and ch["area_m2"].is_monotonic_decreasing
    s = rep.summary
    assert (s["lost"], s["new"], s["fields"]) == (1, 1, 2)
    assert "lost cropland: 1 fields" in format_change_summary(s, ch)


def test_no_change_when_prediction_equals_labels(scene):
    grid, _, labels, fields, _ = scene
    rep = change_report(labels, labels, grid, fields, **SMALL)
    assert len(rep.changes) == 0
    assert set(rep.fields["status"]) == {"crop"}
    assert rep.summary["calibration"] == {"share_pred_crop_on_label_crop": 1.0, "share_pred_crop_on_label_noncrop": 0.0}


def test_thin_strips_and_small_regions_are_not_new_cropland(scene):
    grid, _, labels, fields, _ = scene
    pred = labels.copy()
    pred[20:22, :] = 1  # a 2 px strip along the road between fields
    pred[30:32, 3:5] = 1  # a 2 x 2 px speck
    rep = change_report(pred, labels, grid, fields, **SMALL)
    assert (rep.changes["kind"] == NEW).sum() == 0


def test_field_share_ignores_edges_and_nodata(scene):
    grid, _, labels, fields, _ = scene
    pred = labels.copy()
    pred[2, 2:20] = 0  # the outer ring of field 1 wrong: edge pixels do not count
    pred[17, 2:20] = 0
    shares = field_crop_share(pred, grid, fields, edge_px=1)
    assert shares.loc[0, "share_pred_crop"] == 1.0
    whole = field_crop_share(pred, grid, fields, edge_px=0)
    assert whole.loc[0, "share_pred_crop"] < 1.0
    nodata = np.full_like(pred, 255)
    assert np.isnan(field_crop_share(nodata, grid, fields).loc[0, "share_pred_crop"])


def test_change_raster(scene):
    grid, _, labels, fields, pred = scene
    rep = change_report(pred, labels, grid, fields, **SMALL)
    arr = change_raster(rep.changes, grid)
    assert arr[10, 4] == 1 and arr[30, 10] == 2 and arr[5, 30] == 0


def test_bad_input(scene):
    grid, _, labels, fields, pred = scene
    with pytest.raises(InputError):
        change_report(pred[:10], labels, grid, fields)
    with pytest.raises(InputError):
        change_report(pred, labels, grid, fields, max_share=0)
    with pytest.raises(InputError):
        change_report(np.full_like(pred, 255), labels, grid, fields)


def test_change_report_files_writes_every_output(tmp_path, scene):
    grid, truth, labels, _, pred = scene
    write_raster(tmp_path / "pred.tif", pred, grid, nodata=255)
    truth.to_file(tmp_path / "truth.geojson", driver="GeoJSON")
    rep = change_report_files(tmp_path / "pred.tif", tmp_path / "truth.geojson", tmp_path / "out", **SMALL)
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert names == {"changes.geojson", "changes.csv", "field_shares.geojson", "field_shares.csv", "change.gpkg",
                     "change_summary.json"}
    gj = gpd.read_file(out / "changes.geojson")
    assert gj.crs.to_epsg() == 4326 and len(gj) == 2
    table = pd.read_csv(out / "changes.csv")
    assert list(table["kind"]) == list(rep.changes["kind"]) and table["area_m2"].is_monotonic_decreasing
    assert {"lon", "lat", "confidence", "share_pred_crop"} <= set(table.columns)
    assert table["lon"].between(-122, -121).all()
    layers = {name for name, _ in pyogrio.list_layers(out / "change.gpkg")}
    assert layers == {"changes", "field_shares"}
    assert gpd.read_file(out / "change.gpkg", layer="changes").crs.to_epsg() == 32610
    summary = json.loads((out / "change_summary.json").read_text())
    assert summary["lost"] == 1 and summary["inputs"]["labels"].endswith("truth.geojson")


def test_change_report_from_a_label_raster(tmp_path, scene):
    grid, _, labels, _, pred = scene
    write_raster(tmp_path / "pred.tif", pred, grid, nodata=255)
    write_raster(tmp_path / "labels.tif", labels, grid, nodata=255)
    rep = change_report_files(tmp_path / "pred.tif", tmp_path / "labels.tif", tmp_path / "out", **SMALL)
    assert (rep.changes["kind"] == LOST).sum() == 1
    assert rep.fields["label_class"].isna().all()


def test_cli_change(tmp_path, scene):
    grid, truth, _, _, pred = scene
    write_raster(tmp_path / "pred.tif", pred, grid, nodata=255)
    truth.to_file(tmp_path / "truth.geojson", driver="GeoJSON")
    runner = CliRunner()
    args = ["change", "--pred", str(tmp_path / "pred.tif"), "--labels", str(tmp_path / "truth.geojson"),
            "--out", str(tmp_path / "out"), "--min-area", "300"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "lost cropland: 1 fields" in res.output
    assert (tmp_path / "out" / "changes.geojson").is_file()
    res = runner.invoke(app, ["change", "--pred", str(tmp_path / "missing.tif"), "--labels",
                              str(tmp_path / "truth.geojson"), "--out", str(tmp_path / "out2")])
    assert res.exit_code == 1 and "Error:" in res.output and "does not exist" in res.output
    assert not (tmp_path / "out2").exists()


def test_new_regions_all_filtered_out_gives_empty_frame():
    """Regression: candidate regions that all fail the size/compactness filters must not drop the columns."""
    from cropseg.change import _new_regions
    from cropseg.testing import make_grid

    grid = make_grid()
    pred = np.zeros(grid.shape, np.uint8)
    pred[5:30, 20:21] = 1  # a one-pixel-wide line: not compact
    labels = np.zeros(grid.shape, np.uint8)
    out = _new_regions(pred, labels, grid, 1, 0, 0.0, 0.9)
    assert out.empty and "share_pred_crop" in out.columns
