"""Where the default's errors lie: by distance to the crop / non-crop edge and by land cover, measured.

Data (a) of benchmarks/accuracy.py (the `cropseg synth` scenes of the DWR AOIs, both directions): the
default model (LightGBM, `texture` features, library defaults) is trained as `cropseg train` trains it,
predicts the evaluation scene as `cropseg predict` does (refined), and its errors against the
image-year truth are split by the pixel's distance to the nearest crop / non-crop edge of that truth
(Euclidean, px) and by the synthetic scene's land cover; the same model unrefined (`--no-refine`)
beside it. Each figure is a share of the scored pixels:
crop called non-crop is what costs non-crop precision, non-crop called crop non-crop recall. Errors at
the edge (mixed pixels, headlands) are what a sharper boundary could fix; errors deep inside are whole
fields or patches that look like the other class.

    python benchmarks/error_budget.py [--workdir /tmp/cropseg-bench]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.accuracy import dwr_data, errors_by_cover  # noqa: E402
from cropseg.config import Config  # noqa: E402
from cropseg.predict import predict_scene, with_refinement  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402

#: Distance bands (px) to the crop / non-crop edge of the truth.
BANDS = ((0.0, 1.5), (1.5, 3.0), (3.0, 6.0), (6.0, 12.0), (12.0, np.inf))


def edge_distance(crop: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Distance (px) of each pixel to the nearest scored pixel pair of different classes (4-neighbours)."""
    edge = np.zeros(crop.shape, dtype=bool)
    vertical = (crop[:-1] != crop[1:]) & scored[:-1] & scored[1:]
    horizontal = (crop[:, :-1] != crop[:, 1:]) & scored[:, :-1] & scored[:, 1:]
    edge[:-1] |= vertical
    edge[1:] |= vertical
    edge[:, :-1] |= horizontal
    edge[:, 1:] |= horizontal
    return np.asarray(ndimage.distance_transform_edt(~edge))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    args = ap.parse_args()
    cfg = Config()
    for data, train_dir, labels, aoi, eval_dir, truths in dwr_data(args.workdir):
        res = train_from_files(train_dir, labels, args.workdir / f"budget_{train_dir.name}", aoi=aoi, kind="lgbm",
                               config=cfg)
        preds = {}
        for refine in ("on", "off"):  # as `cropseg predict` runs it, and with --no-refine
            out = args.workdir / f"budget_{train_dir.name}_{refine}.tif"
            trained = with_refinement(res.trained, replace(cfg.predict, refine=refine))
            predict_scene(trained, open_scene(eval_dir), out, cfg.predict.tile_size, resume=False)
            preds[refine] = read(out)[0]
        pred, actual, cover, names = preds["on"], truths["actual"], truths["cover"], truths["cover_names"]
        scored = (actual != 255) & (pred != 255)
        n = scored.sum()
        crop = actual == 1
        crop_as_non = scored & crop & (pred == 0)
        non_as_crop = scored & ~crop & (pred == 1)
        unrefined_wrong = scored & (preds["off"] != actual)
        dist = edge_distance(crop, scored)
        print(f"\n{data}: {(crop_as_non.sum() + non_as_crop.sum()) / n:.4f} of {n} scored pixels wrong "
              f"({unrefined_wrong.sum() / n:.4f} unrefined)\n")
        print("| distance to the crop / non-crop edge (px) | pixels | crop called non-crop | non-crop called crop "
              "| wrong, unrefined |")
        print("|---|---|---|---|---|")
        for lo, hi in BANDS:
            band = scored & (dist >= lo) & (dist < hi)
            print(f"| {lo:g} to {hi:g} | {band.sum() / n:.3f} | {crop_as_non[band].sum() / n:.4f} "
                  f"| {non_as_crop[band].sum() / n:.4f} | {unrefined_wrong[band].sum() / n:.4f} |")
        cover_share = np.bincount(cover[scored & (cover != 255)], minlength=len(names)) / n
        rates = errors_by_cover(pred, actual, cover, names)
        rows = [(rates[name] * cover_share[i], name, cover_share[i], rates[name])
                for i, name in enumerate(names) if name in rates]
        print("\n| land cover (largest error first) | pixels | error rate | error (share of pixels) |")
        print("|---|---|---|---|")
        for share, name, pixels, rate in sorted(rows, reverse=True)[:8]:
            print(f"| {name} | {pixels:.3f} | {rate:.2f} | {share:.4f} |")


if __name__ == "__main__":
    main()
