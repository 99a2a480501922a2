"""Does label-noise-robust training help the default model? Confident-learning style cleaning, measured.

The training labels are out of date for about a tenth of the fields. One standard remedy: fit once,
drop the training samples whose blocked out-of-fold probability of their own label is below q (the
labels the model most confidently disputes), and fit again. Data (a) of benchmarks/accuracy.py (the
`cropseg synth` scenes of the DWR AOIs, both directions), LightGBM with the library defaults, scored
against the image-year truth over every valid pixel of the evaluation scene.

    python benchmarks/label_cleaning.py [--workdir /tmp/cropseg-bench] [--q 0,0.1,0.2,0.3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DWR, dwr_scenes  # noqa: E402
from cropseg.config import Config  # noqa: E402
from cropseg.evaluate import pixel_metrics  # noqa: E402
from cropseg.features import band_names_for  # noqa: E402
from cropseg.grid import Window  # noqa: E402
from cropseg.label import load_labels  # noqa: E402
from cropseg.models.lgbm import LGBMModel  # noqa: E402
from cropseg.predict import predict_proba_window  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.tiling import cut  # noqa: E402
from cropseg.train import (  # noqa: E402
    block_groups,
    build_model,
    extract_samples,
    fit_model,
    resolve_features,
    sample_pixels,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    ap.add_argument("--q", default="0,0.1,0.2,0.3", help="own-label out-of-fold probability cut-offs")
    args = ap.parse_args()
    cfg = Config()
    scenes = dwr_scenes(args.workdir, change_rate=0.1)
    print("| direction | q | samples removed | threshold | weighted F1 | non-crop F1 |\n|---|---|---|---|---|---|")
    for src, dst in (("test", "train"), ("train", "test")):
        scene = open_scene(scenes[src])
        spec = resolve_features("lgbm", band_names_for(scene.band_count))
        labels = load_labels(DWR / f"ground-truth-{src}.geojson", scene.grid, DWR / f"aoi-{src}.geojson", "CLASS1",
                             cfg.labels.crop_classes, valid=scene.read_valid())
        idx = sample_pixels(labels, cfg.train.tree_sample_size, cfg.train.seed)
        y = labels.ravel()[idx].astype(int)
        groups = block_groups(idx, scene.grid.width, cfg.train.cv_block)
        X = extract_samples(scene, spec, idx)
        model = build_model("lgbm", cfg.train)
        assert isinstance(model, LGBMModel)
        oof = model.fit(X, y, groups)["oof_proba"]
        own = np.where(y == 1, oof, 1 - oof)

        target = open_scene(scenes[dst])
        actual = read(scenes[dst] / "actual.tif")[0]
        valid = target.read_valid()
        h = spec.halo
        grid = target.grid
        padded = cut(target.read_reflectance(), Window(-h, -h, grid.width + 2 * h, grid.height + 2 * h))
        for q in (float(v) for v in args.q.split(",")):
            keep = own >= q
            trained, _ = fit_model(X[keep], y[keep], groups[keep], spec, "lgbm", cfg)
            proba = predict_proba_window(trained, padded, valid, h)
            pred = np.where(valid, (proba >= trained.threshold).astype(np.uint8), 255).astype(np.uint8)
            rep = pixel_metrics(pred, actual)["report"]
            print(f"| DWR {src}->{dst} | {q:g} | {(~keep).mean():.3f} | {trained.threshold:.2f} "
                  f"| {rep['weighted avg']['f1-score']:.3f} | {rep['non-crop']['f1-score']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
