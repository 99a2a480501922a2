"""Choosing the guided-filter refinement's radius, eps and step, on scenes the accuracy benchmark does not use.

Two pairs of procedural `cropseg synth` scenes (4.5 km, seeds 11 -> 12 and 13 -> 14, label change
0.1): LightGBM with the library defaults is trained on the first scene of a pair, its crop
probabilities for the second are refined with each (radius, eps, step) of the grid (with step s,
the filter gets the probabilities of every s-th pixel of each row and column only, as in
prediction), thresholded at the model's threshold and scored against the image-year truth. A second
table smooths the guide (red and NIR averaged over a small box, over the data pixels) before the
filter sees it, at the default's step 4 and eps 3e-5: does a guide without the crowns, rows and pixel
noise, whose edges are then those between fields, refine better? The DWR and Sentinel-2 data of
benchmarks/accuracy.py stay held out: the chosen setting is then measured there.

    python benchmarks/refinement.py [--workdir /tmp/cropseg-bench]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import PROCEDURAL_PAIRS, procedural_scene  # noqa: E402
from cropseg.config import PredictConfig  # noqa: E402
from cropseg.evaluate import pixel_metrics  # noqa: E402
from cropseg.features import data_mask, inverse_count, window_mean  # noqa: E402
from cropseg.predict import predict_proba_window  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.refine import Refinement, guided_filter  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402

RADII = (4, 8, 16, 24, 32)
EPS = (1e-5, 3e-5, 1e-4, 3e-4)
STEPS = (1, 2, 4)
#: Box sizes (px) of the smoothed guide (1: the guide as it is) and the radii they are tried with.
GUIDE_BOXES = (1, 3, 5, 7)
GUIDE_RADII = (8, 16, 32)


def weighted_f1(pred: np.ndarray, data: np.ndarray, truth: np.ndarray) -> float:
    coded = np.where(data, pred, 255).astype(np.uint8)
    return float(pixel_metrics(coded, truth)["report"]["weighted avg"]["f1-score"])


def smoothed(guide: np.ndarray, data: np.ndarray, size: int) -> np.ndarray:
    """``guide`` (bands, rows, cols) averaged over ``size`` px boxes of the data pixels (``size`` 1: as it is)."""
    if size == 1:
        return guide
    inv = inverse_count(data, size)
    return np.stack([window_mean(np.where(data, g, 0).astype(np.float32), size, inv) for g in guide])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    args = ap.parse_args()
    scores: dict[tuple[int, float, int], list[float]] = {}
    guide_scores: dict[tuple[int, int], list[float]] = {}  # smoothed guides, at the default's eps and step
    default = PredictConfig()
    base = []
    for src, dst in PROCEDURAL_PAIRS:
        train_dir, eval_dir = procedural_scene(args.workdir, src), procedural_scene(args.workdir, dst)
        res = train_from_files(train_dir, train_dir / "labels.tif", args.workdir / f"refine_model_s{src}", kind="lgbm")
        trained = res.trained
        refl = open_scene(eval_dir).read_reflectance()
        h = trained.halo
        padded = np.pad(refl, ((0, 0), (h, h), (h, h)))
        data = data_mask(refl)
        proba = predict_proba_window(trained, padded, data, h)
        truth = read(eval_dir / "actual.tif")[0]
        base.append(weighted_f1(proba >= trained.threshold, data, truth))
        for step in STEPS:
            for radius in RADII:
                for eps in EPS:
                    refined = guided_filter(refl[[2, 3]], proba[::step, ::step], data, Refinement(radius, eps, step))
                    scores.setdefault((radius, eps, step), []).append(
                        weighted_f1(refined >= trained.threshold, data, truth))
        lattice = slice(None, None, default.refine_step)
        for size in GUIDE_BOXES:
            guide = smoothed(refl[[2, 3]], data, size)
            for radius in GUIDE_RADII:
                refined = guided_filter(guide, proba[lattice, lattice], data,
                                        Refinement(radius, default.refine_eps, default.refine_step))
                guide_scores.setdefault((size, radius), []).append(
                    weighted_f1(refined >= trained.threshold, data, truth))
    print(f"no refinement: weighted F1 {' / '.join(f'{b:.4f}' for b in base)} (mean {np.mean(base):.4f})")
    print("| step | radius | " + " | ".join(f"eps {e:g}" for e in EPS) + " |")
    print("|---|---|" + "---|" * len(EPS))
    for step in STEPS:
        for radius in RADII:
            cells = " | ".join(f"{np.mean(scores[(radius, e, step)]):.4f}" for e in EPS)
            print(f"| {step} | {radius} | {cells} |")
    for step in STEPS:
        best = max((k for k in scores if k[2] == step), key=lambda k: np.mean(scores[k]))
        print(f"best at step {step}: radius {best[0]}, eps {best[1]:g}: mean weighted F1 {np.mean(scores[best]):.4f}")
    print(f"\nsmoothed guide (step {default.refine_step}, eps {default.refine_eps:g}):")
    print("| guide box | " + " | ".join(f"radius {r}" for r in GUIDE_RADII) + " |\n|---|" + "---|" * len(GUIDE_RADII))
    for size in GUIDE_BOXES:
        print(f"| {size} | " + " | ".join(f"{np.mean(guide_scores[(size, r)]):.4f}" for r in GUIDE_RADII) + " |")


if __name__ == "__main__":
    main()
