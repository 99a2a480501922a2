"""The offline demo: the whole pipeline on two generated scenes, no account, no network.

A training scene and a separate test scene are generated (:mod:`cropseg.synth`), the default
model (``train.model`` of the config: LightGBM on per-pixel features) is trained on the first,
applied to the second, scored against both the label-year truth and the image-year truth,
polygonized, and drawn as a figure. Everything lands in one folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cropseg import raster_io
from cropseg.change import change_report_files
from cropseg.config import Config
from cropseg.evaluate import evaluate_files, format_metrics
from cropseg.label import NODATA
from cropseg.manifest import append_stage, software_versions
from cropseg.polygonize import polygonize_file
from cropseg.predict import predict_from_files
from cropseg.progress import ProgressCallback, report
from cropseg.raster_io import atomic_path
from cropseg.report import build_report
from cropseg.scene import open_scene
from cropseg.train import train_from_files
from cropseg.visualize import comparison_figure

DEMO_SIZE_M = (3000.0, 3000.0)


def run_demo(
    out: str | Path,
    seed: int = 0,
    size_m: tuple[float, float] = DEMO_SIZE_M,
    config: Config | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run the demo into folder ``out``; return the summary (also written as summary.json / summary.md)."""
    from cropseg.synth import procedural_layout, synthesize, write_synth

    cfg = config or Config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    steps = 9
    step = 0

    def tick(name: str) -> None:
        nonlocal step
        report(progress, "Demo", step, steps)
        step += 1

    t0 = time.perf_counter()
    scenes = {}
    for name, offset, lon_shift in (("train_scene", 0, 0.0), ("test_scene", 1, 0.05)):
        tick(f"synth {name}")
        origin = (-121.30 + lon_shift, 38.30)
        truth, aoi = procedural_layout(seed=seed * 2 + offset, size_m=size_m, origin_lonlat=origin)
        scene = synthesize(truth, aoi, seed=seed * 2 + offset)
        scenes[name] = write_synth(scene, out / name)
    timings["synth"] = time.perf_counter() - t0

    tick("train")
    t = time.perf_counter()
    train_dir = out / "train_scene"
    result = train_from_files(
        train_dir, scenes["train_scene"]["truth"], out / "model", aoi=scenes["train_scene"]["aoi"],
        config=cfg, progress=progress,
    )
    timings["train"] = time.perf_counter() - t

    tick("predict")
    t = time.perf_counter()
    test_dir = out / "test_scene"
    pred_path = predict_from_files(out / "model", test_dir, out / "prediction.tif", config=cfg, progress=progress)
    timings["predict"] = time.perf_counter() - t

    tick("evaluate")
    t = time.perf_counter()
    metrics = {
        "label_year": evaluate_files(pred_path, scenes["test_scene"]["labels"]),
        "image_year": evaluate_files(pred_path, scenes["test_scene"]["actual"]),
    }
    with atomic_path(out / "metrics.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    timings["evaluate"] = time.perf_counter() - t

    tick("polygonize")
    t = time.perf_counter()
    p = cfg.polygonize
    polys = polygonize_file(
        pred_path, out / "fields.geojson", gpkg=out / "fields.gpkg",
        median_size=p.median_size, simplify=p.simplify, min_area=p.min_area,
    )
    timings["polygonize"] = time.perf_counter() - t

    tick("figure")
    t = time.perf_counter()
    test_scene = open_scene(test_dir)
    labels = raster_io.read(scenes["test_scene"]["labels"])[0]
    pred = raster_io.read(pred_path)[0]
    valid = test_scene.read_valid() & (labels != NODATA)
    comparison_figure(
        out / "figure.png", test_scene.read_reflectance(), valid, labels, pred,
        title=f"cropseg demo: test scene ({result.trained.model.kind} model)",
    )
    timings["figure"] = time.perf_counter() - t

    tick("change")
    t = time.perf_counter()
    test = scenes["test_scene"]
    change_report_files(pred_path, test["truth"], out / "change", aoi=test["aoi"])
    timings["change"] = time.perf_counter() - t
    files = {
        "prediction": str(pred_path), "polygons": str(out / "fields.geojson"), "figure": str(out / "figure.png"),
        "metrics": str(out / "metrics.json"), "model": str(out / "model"), "change": str(out / "change"),
        "report": str(out / "report.html"),
    }
    inputs = {"image": "test_scene", "labels": "test_scene/labels.tif", "truth": "test_scene/truth.geojson",
              "aoi": "test_scene/aoi.geojson", "change": "change"}
    append_stage(out, "demo", {"seed": seed, **inputs, "files": files})

    tick("report")
    t = time.perf_counter()
    build_report(out, out / "report.html", title="cropseg demo: test scene")
    timings["report"] = time.perf_counter() - t
    report(progress, "Demo", steps, steps)

    cv = result.report["cv"]
    lines = [
        "# cropseg demo",
        "",
        f"Model: {result.trained.model.kind}, {_params(cv['chosen'])} chosen by {cv['method']} "
        f"(blocked CV F1 {cv['blocked_cv_f1_weighted']:.3f}, random-split CV F1 {cv['random_cv_f1_weighted']:.3f})",
        "",
        "## Test scene against the label-year truth (labels.tif)",
        "```",
        format_metrics(metrics["label_year"]),
        "```",
        "",
        "## Test scene against the image-year truth (actual.tif)",
        "```",
        format_metrics(metrics["image_year"]),
        "```",
        "",
        f"Polygons: {len(polys)} fields, {polys['area_ha'].sum():.1f} ha (fields.geojson, fields.gpkg)",
        "",
        f"Change report: {out / 'change'}; HTML report (opens offline): {out / 'report.html'}",
        "",
        "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        f"Total: {time.perf_counter() - t0:.1f} s",
    ]
    text = "\n".join(lines) + "\n"
    summary = {
        "metrics": metrics,
        "cv": cv,
        "polygons": len(polys),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "software": software_versions(),
        "files": files,
        "text": text,
    }
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _params(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in chosen.items())
