"""Would deciding per field instead of per pixel reach the target? Object-level averaging, measured.

The default model (LightGBM on the `texture` features, refined by the guided filter) is trained as
`benchmarks/accuracy.py` trains it (seed 0), on the same data: the `cropseg synth` scenes of the DWR
AOIs (both directions) and the Sentinel-2 scene (west -> east). Its crop probabilities over the whole
evaluation scene are then decided in other ways, all with the model's own threshold (chosen on its
blocked validation folds), and scored against the image-year truth:

- the default (guided filter, radius 8) and the guided filter at radius 16 and 32;
- the crop mask grown by one pixel (the survey polygons include the bare headlands and field edges
  that the image shows as soil, so the model's crop areas are slightly smaller than the truth's);
- the unrefined probabilities averaged within image segments: Felzenszwalb's graph segmentation
  (scikit-image) of the reflectance, reduced by 2 or 4 px (the refinement's lattice), at two scales;
- `cropseg fields` (`cropseg.fields`): the probabilities averaged within the evaluation area's field
  polygons as a user would have them, geometry only (DWR: the survey's polygons of the label year, from
  which `cropseg synth` drew the scene, so they fit its fields exactly; Sentinel-2: the OSM land-use
  polygons that label it); pixels outside keep their own decision;
- the KNN reference (trained as "Accuracy" trains it), per pixel and decided per field the same way, for
  the error ratios of `cropseg fields` against both;
- an oracle (DWR only): the probabilities averaged within the true land-cover regions of the scene
  (connected pixels of one cover, from `cover_labels.tif`): a bound on what field-level decisions
  could give with perfect fields. It also knows the bare headlands belong to their fields;
- the field polygons and, outside them, the segments' parts outside them (unrefined probabilities).

    python benchmarks/object_level.py [--workdir /tmp/cropseg-bench]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import geopandas as gpd
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DWR  # noqa: E402
from benchmarks.accuracy import OSM_CROP, OSM_NONCROP, S2  # noqa: E402
from benchmarks.texture_directions import datasets  # noqa: E402
from cropseg.config import Config  # noqa: E402
from cropseg.evaluate import pixel_metrics  # noqa: E402
from cropseg.fields import accumulate, decide, field_ids, field_means, fields_on_grid  # noqa: E402
from cropseg.grid import Window  # noqa: E402
from cropseg.models import TrainedModel  # noqa: E402
from cropseg.predict import predict_proba_window, with_refinement  # noqa: E402
from cropseg.scene import Scene, open_scene  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402
from cropseg.vector_io import read_vector  # noqa: E402

SEGMENTATIONS = ((2, 200), (4, 200), (4, 800))  # (reduction in px, Felzenszwalb scale)
KNN = "KNN reference"
WITHIN = "mean within the area's field polygons"


def scene_proba(trained: TrainedModel, scene: Scene) -> np.ndarray:
    """Crop probability of every pixel of the scene (NaN where not valid), in one window."""
    g, h = scene.grid, trained.halo
    reflectance = scene.read_reflectance(Window(-h, -h, g.width + 2 * h, g.height + 2 * h), boundless=True)
    return predict_proba_window(trained, reflectance, scene.read_valid(), h)


def region_mean(proba: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Mean of the valid probabilities within each region (int labels), NaN where ``proba`` is."""
    valid = ~np.isnan(proba)
    counts = np.bincount(regions.ravel(), weights=valid.ravel())
    sums = np.bincount(regions.ravel(), weights=np.where(valid, proba, 0.0).ravel())
    means = sums / np.maximum(counts, 1)
    return np.where(valid, means[regions], np.nan).astype(np.float32)


def cover_regions(cover: np.ndarray) -> np.ndarray:
    """Connected regions (4-neighbours) of one land cover each; 0 outside the scene's covers (255)."""
    regions = np.zeros(cover.shape, np.int64)
    count = 0
    for value in np.unique(cover):
        if value == 255:
            continue
        labels, n = ndimage.label(cover == value)
        regions[labels > 0] = labels[labels > 0] + count
        count += n
    return regions


def area_fields(label: str) -> gpd.GeoDataFrame:
    """The evaluation area's field polygons (geometry; their classes are not used)."""
    if label.startswith("DWR"):
        return read_vector(DWR / f"ground-truth-{label.split('->')[1]}.geojson")
    osm = read_vector(next(S2.glob("gis_osm_*.gpkg")))
    return osm[osm["fclass"].isin(OSM_CROP + OSM_NONCROP)]


def decided_per_field(proba: np.ndarray, ids: np.ndarray, threshold: float) -> np.ndarray:
    """`cropseg fields`' decision of the whole scene's probabilities (its tiles sum to the same field means)."""
    totals = np.zeros((2, int(ids.max()) + 1))
    accumulate(totals, proba, ids)
    return decide(proba, ids, field_means(totals), threshold)


def segments(reflectance: np.ndarray, reduce: int, scale: int) -> tuple[np.ndarray, float]:
    """Felzenszwalb segments of the reflectance reduced ``reduce`` times (band-standardised), at full size; seconds."""
    from skimage.segmentation import felzenszwalb

    t0 = time.perf_counter()
    image = np.moveaxis(reflectance, 0, -1).astype(np.float32)
    rows, cols = image.shape[:2]
    small = cv2.resize(image, (cols // reduce, rows // reduce), interpolation=cv2.INTER_AREA)
    small = small / small.reshape(-1, small.shape[-1]).std(axis=0)
    with warnings.catch_warnings():  # four bands are what it is given: not an RGB(A) image
        warnings.filterwarnings("ignore", "Got image with third dimension", RuntimeWarning)
        labels = felzenszwalb(small, scale=scale, sigma=0.5, min_size=max(4, 50 // reduce**2), channel_axis=-1)
    full = cv2.resize(labels.astype(np.float32), (cols, rows), interpolation=cv2.INTER_NEAREST)
    return full.astype(np.int64), time.perf_counter() - t0


def score(
    proba: np.ndarray, threshold: float, actual: np.ndarray, eval_mask: np.ndarray | None,
    crop: np.ndarray | None = None,
) -> tuple[float, float, np.ndarray]:
    """Weighted and non-crop F1 against ``actual`` of the decision (``proba`` >= threshold, or ``crop``), and it."""
    decided = proba >= threshold if crop is None else crop.astype(bool)
    pred = np.where(np.isnan(proba) | (actual == 255), 255, decided).astype(np.uint8)
    if eval_mask is not None:
        pred = np.where(eval_mask, pred, 255).astype(np.uint8)
    rep = pixel_metrics(pred, actual)["report"]
    return rep["weighted avg"]["f1-score"], rep["non-crop"]["f1-score"], pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    args = ap.parse_args()
    try:
        import skimage  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs scikit-image: pip install -e '.[dev]'")
    cfg = Config()
    sets = datasets(args.workdir, "dwr")
    rows: dict[str, dict[str, tuple[float, float, str]]] = {}
    errors: list[str] = []
    for label, train_dir, truth, aoi, eval_dir, truths, eval_mask in sets:
        work = args.workdir / "object_level" / label.split()[1]
        res = train_from_files(train_dir, truth, work, aoi=aoi, kind="lgbm", config=cfg,
                               label_field="CLASS1" if truth.suffix != ".tif" else None)
        scene = open_scene(eval_dir)
        actual = truths["actual"]
        threshold = res.trained.threshold
        judge = partial(score, threshold=threshold, actual=actual, eval_mask=eval_mask)

        raw = scene_proba(with_refinement(res.trained, replace(cfg.predict, refine="off")), scene)
        default = scene_proba(with_refinement(res.trained, cfg.predict), scene)
        found: dict[str, tuple[float, float, str]] = {}
        preds: dict[str, np.ndarray] = {}
        wf1, nc, preds["default"] = judge(default)
        found["default: guided filter, radius 8"] = (wf1, nc, "")
        for radius in (16, 32):
            wf1, nc, _ = judge(scene_proba(with_refinement(res.trained, replace(cfg.predict, refine_radius=radius)),
                                           scene))
            found[f"guided filter, radius {radius}"] = (wf1, nc, "")
        grown = cv2.dilate((np.nan_to_num(default) >= threshold).astype(np.uint8),
                           cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
        wf1, nc, _ = judge(default, crop=grown)
        found["default, crop mask grown by 1 px"] = (wf1, nc, "")
        grid = scene.grid
        ids = field_ids(fields_on_grid(area_fields(label), grid), grid, Window(0, 0, grid.width, grid.height))
        for name, proba in (("", default), (" --no-refine", raw)):
            decided = decided_per_field(proba, ids, threshold)
            wf1, nc, _ = judge(proba, crop=np.where(decided == 255, 0, decided))
            found[f"`cropseg fields{name}`: {WITHIN}"] = (wf1, nc, "")
        reflectance = scene.read_reflectance()
        inside = region_mean(raw, ids)
        for reduce, scale in SEGMENTATIONS:
            regions, seconds = segments(reflectance, reduce, scale)
            wf1, nc, _ = judge(region_mean(raw, regions))
            mpx = reflectance.shape[1] * reflectance.shape[2] / 1e6 / seconds
            found[f"segment mean (Felzenszwalb, 1/{reduce}, scale {scale})"] = (wf1, nc, f"{mpx:.1f}")
            # the segments' parts outside the polygons (the probabilities inside them left out)
            outside = region_mean(np.where(ids > 0, np.nan, raw), regions)
            wf1, nc, _ = judge(np.where(ids > 0, inside, outside))
            found[f"field polygons (unrefined), segment mean outside them (1/{reduce}, scale {scale})"] = (wf1, nc, "")
        found.update(knn_rows(label, train_dir, truth, aoi, scene, ids, work.with_name(f"{work.name}_knn"), cfg,
                              partial(score, actual=actual, eval_mask=eval_mask)))
        cover_path = eval_dir / "cover_labels.tif"
        if cover_path.exists() and eval_mask is None:
            import rasterio

            with rasterio.open(cover_path) as ds:
                cover, names = ds.read(1), ds.tags().get("COVERS", "").split(",")
            regions = cover_regions(cover)
            for name, proba in (("unrefined", raw), ("refined", default)):
                wf1, nc, preds[f"oracle {name}"] = judge(region_mean(proba, regions))
                found[f"oracle: mean within true cover regions ({name})"] = (wf1, nc, "")
            errors.append(error_line(label, cover, names, actual, preds))
        for row, result in found.items():
            rows.setdefault(row, {})[label] = result
        print(f"  {label}: threshold {threshold:.2f}", flush=True)
    header = " | ".join(f"{label} wF1 | non-crop F1" for label, *_ in sets)
    lines = [f"| decision | {header} | segmentation Mpx/s |", "|---|" + "---|---|" * len(sets) + "---|"]
    for row, by_set in rows.items():
        cells = [f"{by_set[name][k]:.3f}" if name in by_set else "" for name, *_ in sets for k in (0, 1)]
        mpx = " / ".join(c[2] for c in by_set.values() if c[2])
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {mpx} |")
    print("\n".join(lines))
    print("\nError ratios (1 - weighted F1, 1 - non-crop F1) of `cropseg fields` (LightGBM, refined):")
    fields_row = rows[f"`cropseg fields`: {WITHIN}"]
    for name, *_ in sets:
        for knn in (KNN, f"{KNN}, `cropseg fields`"):
            ratio = [(1 - float(fields_row[name][k])) / (1 - float(rows[knn][name][k])) for k in (0, 1)]
            print(f"- {name}, against {knn}: {ratio[0]:.2f} / {ratio[1]:.2f}")
    print("\nError (share of the scene's pixels) by land cover, default against the oracle (unrefined):")
    print("\n".join(errors))


def knn_rows(
    label: str, train_dir: Path, truth: Path, aoi: Path | None, scene: Scene, ids: np.ndarray, work: Path, cfg: Config,
    judge: Callable[..., tuple[float, float, np.ndarray]],
) -> dict[str, tuple[float, float, str]]:
    """The KNN reference (as "Accuracy" trains it), per pixel and decided per field like `cropseg fields`."""
    res = train_from_files(train_dir, truth, work, aoi=aoi, kind="knn", config=cfg,
                           label_field="CLASS1" if truth.suffix != ".tif" else None)
    proba = scene_proba(with_refinement(res.trained, cfg.predict), scene)  # not refined: knn
    threshold = res.trained.threshold
    decided = decided_per_field(proba, ids, threshold)
    wf1, nc, _ = judge(proba, threshold)
    fwf1, fnc, _ = judge(proba, threshold, crop=np.where(decided == 255, 0, decided))
    print(f"  {label}: KNN threshold {threshold:.2f}", flush=True)
    return {KNN: (wf1, nc, ""), f"{KNN}, `cropseg fields`": (fwf1, fnc, "")}


def error_line(label: str, cover: np.ndarray, names: list[str], actual: np.ndarray,
               preds: dict[str, np.ndarray]) -> str:
    """The covers with the most misclassified pixels for the default, with the oracle's share beside."""
    ok = (preds["default"] != 255) & (actual != 255)
    share: dict[str, Any] = {}
    for key in ("default", "oracle unrefined"):
        wrong = ok & (preds[key] != actual)
        share[key] = {n: wrong[cover == i].sum() / ok.sum() for i, n in enumerate(names)}
    top = sorted(share["default"], key=lambda n: -share["default"][n])[:6]
    total = {k: sum(v.values()) for k, v in share.items()}
    cells = ", ".join(f"{n} {share['default'][n]:.3f} / {share['oracle unrefined'][n]:.3f}" for n in top)
    return f"- {label}: all {total['default']:.3f} / {total['oracle unrefined']:.3f}; {cells}"


if __name__ == "__main__":
    main()
