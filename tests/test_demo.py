import json

from cropseg.demo import run_demo


def test_demo_end_to_end_small(tmp_path):
    summary = run_demo(tmp_path / "demo", seed=3, size_m=(900.0, 900.0))
    out = tmp_path / "demo"
    for name in ("prediction.tif", "fields.geojson", "fields.gpkg", "figure.png", "metrics.json", "summary.md",
                 "report.html", "change/changes.geojson", "model/model.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for year in ("label_year", "image_year"):
        f1 = metrics[year]["report"]["weighted avg"]["f1-score"]
        assert 0.3 < f1 <= 1.0
    assert summary["metrics"] == metrics
    assert "weighted avg" in (out / "summary.md").read_text()
    assert set(summary["timings_s"]) >= {"synth", "train", "predict", "evaluate", "polygonize", "report"}
