"""Does label-noise-robust training help the default model? Confident-learning style cleaning, measured.

The training labels are out of date for about a tenth of the fields. One standard remedy: fit once,
drop the training samples whose blocked out-of-fold probability of their own label is below q (the
labels the model most confidently disputes), and fit again. Two units of dispute:

* ``pixel``: each sample on its own;
* ``field``: each crop polygon of the ground truth as a whole (the mean out-of-fold crop probability of
  its samples); a lost field is a whole polygon, so a field's mean should dispute it more surely than
  any of its pixels. The benchmark also counts how many of the polygons that really changed (image-year
  truth of the training scene mostly non-crop) are among those dropped.

Data (a) of benchmarks/accuracy.py (the `cropseg synth` scenes of the DWR AOIs, both directions),
LightGBM with the library defaults, predicted as `cropseg predict` runs it (refined) and scored against
the image-year truth over every valid pixel of the evaluation scene.

    python benchmarks/label_cleaning.py [--workdir /tmp/cropseg-bench] [--pixel-q 0,0.1,0.2,0.3]
                                        [--field-q 0.2,0.3,0.4,0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
from rasterio.features import rasterize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DWR, dwr_scenes  # noqa: E402
from cropseg.config import Config  # noqa: E402
from cropseg.evaluate import pixel_metrics  # noqa: E402
from cropseg.features import band_names_for  # noqa: E402
from cropseg.label import crop_polygons, rasterize_labels  # noqa: E402
from cropseg.models.lgbm import LGBMModel  # noqa: E402
from cropseg.predict import predict_scene, with_refinement  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.scene import Scene, open_scene  # noqa: E402
from cropseg.train import (  # noqa: E402
    block_groups,
    build_model,
    extract_samples,
    fit_model,
    resolve_features,
    sample_pixels,
)
from cropseg.vector_io import read_vector  # noqa: E402


def polygon_ids(scene: Scene, truth: gpd.GeoDataFrame, cfg: Config) -> np.ndarray:
    """int32 (rows, cols): 1 + the index of the crop polygon covering each pixel, 0 outside every crop polygon."""
    crops = crop_polygons(truth, "CLASS1", cfg.labels.crop_classes)
    ids = np.zeros(scene.grid.shape, dtype=np.int32)
    shapes = [(g, i + 1) for i, g in enumerate(crops.to_crs(scene.grid.crs).geometry) if g is not None]
    rasterize(shapes, out=ids, transform=scene.grid.transform)
    return ids


def field_means(ids: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per polygon id (0..n-1): the count of ``ids`` and the mean of ``values`` over them."""
    count = np.bincount(ids, minlength=n)
    return count, np.bincount(ids, weights=values, minlength=n) / np.maximum(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    ap.add_argument("--pixel-q", default="0,0.1,0.2,0.3", help="own-label out-of-fold probability cut-offs, pixels")
    ap.add_argument("--field-q", default="0.2,0.3,0.4,0.5", help="the same, the mean over each crop polygon")
    args = ap.parse_args()
    cfg = Config()
    scenes = dwr_scenes(args.workdir, change_rate=0.1)
    print("| direction | unit | q | samples removed | polygons removed (really changed / all changed) | threshold "
          "| weighted F1 | non-crop F1 |\n|---|---|---|---|---|---|---|---|")
    for src, dst in (("test", "train"), ("train", "test")):
        scene = open_scene(scenes[src])
        spec = resolve_features("lgbm", band_names_for(scene.band_count))
        truth = read_vector(DWR / f"ground-truth-{src}.geojson", "ground truth")
        labels = rasterize_labels(truth, scene.grid, "CLASS1", cfg.labels.crop_classes,
                                  aoi=read_vector(DWR / f"aoi-{src}.geojson", "AOI"), valid=scene.read_valid())
        idx = sample_pixels(labels, cfg.train.tree_sample_size, cfg.train.seed)
        y = labels.ravel()[idx].astype(int)
        groups = block_groups(idx, scene.grid.width, cfg.train.cv_block)
        X = extract_samples(scene, spec, idx)
        model = build_model("lgbm", cfg.train)
        assert isinstance(model, LGBMModel)
        oof = model.fit(X, y, groups)["oof_proba"]
        own = np.where(y == 1, oof, 1 - oof)

        # each sample's crop polygon, each polygon's mean out-of-fold probability, and which really changed
        ids = polygon_ids(scene, truth, cfg)
        n = int(ids.max()) + 1
        sample_ids = ids.ravel()[idx]
        count, mean_oof = field_means(sample_ids, oof, n)
        image_year = read(scenes[src] / "actual.tif")[0].ravel()
        scored = image_year != 255
        px_count, crop_share = field_means(ids.ravel()[scored], (image_year[scored] == 1).astype(float), n)
        changed = (px_count > 0) & (crop_share < 0.5)
        changed[0] = False

        target = open_scene(scenes[dst])
        actual = read(scenes[dst] / "actual.tif")[0]
        runs: list[tuple[str, float, np.ndarray, str]] = []
        for q in (float(v) for v in args.pixel_q.split(",")):
            runs.append(("pixel", q, own >= q, ""))
        for q in (float(v) for v in args.field_q.split(",")):
            dropped = (mean_oof < q) & (count > 0)
            dropped[0] = False  # not a crop polygon
            runs.append(("field", q, ~dropped[sample_ids],
                         f"{dropped.sum()} ({np.sum(dropped & changed)} / {changed.sum()})"))
        for unit, q, keep, polygons in runs:
            trained, _ = fit_model(X[keep], y[keep], groups[keep], spec, "lgbm", cfg)
            out = args.workdir / f"label_cleaning_{src}_{unit}_{q:g}.tif"
            predict_scene(with_refinement(trained, cfg.predict), target, out, cfg.predict.tile_size, resume=False)
            rep = pixel_metrics(read(out)[0], actual)["report"]
            print(f"| DWR {src}->{dst} | {unit} | {q:g} | {(~keep).mean():.3f} | {polygons} | {trained.threshold:.2f} "
                  f"| {rep['weighted avg']['f1-score']:.3f} | {rep['non-crop']['f1-score']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
