"""The HTML report of a run folder: what it finds, what it writes, that it needs no network."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cropseg.change import change_report_files
from cropseg.cli import app
from cropseg.evaluate import evaluate_files
from cropseg.label import rasterize_labels
from cropseg.manifest import append_stage
from cropseg.polygonize import polygonize_file
from cropseg.raster_io import write_raster
from cropseg.report import ReportError, build_report, find_run_files, leaflet_assets, map_grid
from cropseg.testing import field_polygons, make_grid, write_test_scene


def make_run(folder: Path, full: bool = True) -> Path:
    """A run folder on the tiny test scene: prediction (field 1 lost, the urban block new), and with ``full``
    a scene, metrics JSON, polygons, change outputs and a manifest naming image, labels and truth."""
    grid = make_grid()
    truth = field_polygons(grid)
    labels = rasterize_labels(truth, grid)
    pred = labels.copy()
    pred[2:18, 2:20] = 0
    pred[24:36, 2:20] = 1
    folder.mkdir(parents=True, exist_ok=True)
    write_raster(folder / "prediction.tif", pred, grid, nodata=255)
    if not full:
        return folder
    files = write_test_scene(folder / "scene")
    m = evaluate_files(folder / "prediction.tif", files["truth"])
    (folder / "metrics.json").write_text(json.dumps(m))
    polygonize_file(folder / "prediction.tif", folder / "fields.geojson", median_size=1, min_area=100)
    change_report_files(folder / "prediction.tif", files["truth"], folder / "change", min_area=300, median_size=3,
                        opening_px=1)
    append_stage(folder, "test", {"image": "scene", "labels": "scene/truth.geojson", "truth": "scene/truth.geojson"})
    return folder


def page_data(html: str) -> dict:
    m = re.search(r'<script id="cropseg-data" type="application/json">(.*?)</script>', html, re.S)
    assert m
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report") / "run")
    return run, build_report(run, n_disagreements=1)


def test_find_run_files(full_report):
    run, _ = full_report
    f = find_run_files(run)
    assert f.prediction == run / "prediction.tif"
    assert f.image == run / "scene" and f.labels == run / "scene" / "truth.geojson" and f.truth == f.labels
    assert f.polygons == run / "fields.geojson"
    assert f.changes == run / "change" / "changes.geojson" and f.field_shares is not None
    assert f.metrics == [run / "metrics.json"]


def test_full_report_is_self_contained(full_report):
    run, path = full_report
    assert path == run / "report.html"
    html = path.read_text()
    # nothing fetched: no external script / style / image, a CSP that forbids any request but data: URIs
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=\"(?!data:)", html)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "sourceMappingURL" not in html and "url(images/" not in html
    assert "L.imageOverlay" in html and "Leaflet 1.9" in html
    for text in ("Scores", "crop IoU", "confidence intervals by spatial block bootstrap", "Field (object) metrics",
                 "Change: lost and new cropland", "Figures", "overview.png"):
        assert text in html, text
    data = page_data(html)
    names = [r["name"] for r in data["rasters"]] + [v["name"] for v in data["vectors"]]
    assert names == ["Image (true colour)", "Image (false colour)", "Labels", "Prediction", "Disagreement",
                     "Predicted polygons", "Fields: share predicted crop", "Changes (lost / new cropland)"]
    assert all(r["url"].startswith("data:image/png;base64,") for r in data["rasters"])
    (south, west), (north, east) = data["bounds"]
    assert -122 < west < east < -121 and 38 < south < north < 39
    fields = next(v for v in data["vectors"] if v["id"] == "fields")["data"]["features"]
    assert {f["properties"]["status"] for f in fields} == {"lost", "crop"}
    assert sorted((run / "figures").iterdir()) == [run / "figures" / "disagreement_1.png",
                                                  run / "figures" / "overview.png"]


def test_report_of_a_folder_with_only_a_prediction(tmp_path):
    run = make_run(tmp_path / "bare", full=False)
    html = build_report(run, tmp_path / "out" / "r.html", n_disagreements=1).read_text()
    assert "No labels found" in html
    data = page_data(html)
    assert [r["name"] for r in data["rasters"]] == ["Prediction"] and data["vectors"] == []
    assert (tmp_path / "out" / "figures" / "overview.png").is_file()


def test_report_finds_labels_through_the_metrics_inputs(tmp_path):
    run = make_run(tmp_path / "run", full=False)
    files = write_test_scene(tmp_path / "scene")
    m = evaluate_files(run / "prediction.tif", files["truth"])
    (run / "eval.json").write_text(json.dumps({"a": m, "b": m}))
    f = find_run_files(run)
    assert f.labels == files["truth"] and f.image is None
    html = build_report(run, n_disagreements=0).read_text()
    assert "eval: a" in html and "eval: b" in html and "Disagreement" in html


def test_report_without_prediction_fails_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no prediction GeoTIFF"):
        build_report(tmp_path / "empty")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "Error:" in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_cli_report(tmp_path):
    run = make_run(tmp_path / "run", full=False)
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "x.html"), "--disagreements", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").is_file() and "opens offline" in res.output


def test_leaflet_assets_come_from_the_package():
    js, css = leaflet_assets()
    assert "L.imageOverlay" in js or "imageOverlay" in js
    assert "sourceMappingURL" not in js
    assert "url(images/" not in css and "data:image/png;base64," in css


def test_map_grid_covers_the_scene():
    grid = make_grid()
    mg = map_grid(grid, max_px=20)
    assert max(mg.grid.shape) <= 20
    assert mg.grid.crs.to_epsg() == 3857
    (south, west), (north, east) = mg.bounds_latlon
    assert south < north and west < east
    assert np.isfinite([south, west, north, east]).all()
