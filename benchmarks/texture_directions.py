"""How many directions should the row-texture filters take, and on which image? Measured over three seeds.

Fields lie at every angle, and the training area need not have the angles of the area a model is
used on (the DWR test AOI's fields run north-south, half of the train AOI's are 20 to 45 degrees
off). Each variant replaces the row-texture settings of the `texture` preset (directions, the image
the Gabor filters see, the stride of the window means); LightGBM with the library defaults is trained
with seeds 0, 1 and 2 (the training sample and the boosting's bagging), predicts the evaluation scene
as `cropseg predict` does (refined, step 4; the last column: without the refinement) and is scored
against the image-year truth.

Data ``dwr``: data (a) and (b) of benchmarks/accuracy.py (the DWR AOIs in both directions, and the
Sentinel-2 scene when ../shared has it). Data ``procedural``: the procedural scene pairs that chose
the refinement settings, which the accuracy benchmark does not use.

    python benchmarks/texture_directions.py [--data dwr|procedural] [--seeds 0,1,2] [--variants NAME,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.accuracy import s2_data  # noqa: E402
from benchmarks.feature_sets import directions  # noqa: E402
from cropseg.config import Config, TrainConfig  # noqa: E402
from cropseg.evaluate import pixel_metrics  # noqa: E402
from cropseg.features import FEATURE_PRESETS, FeatureSpec, compute_features  # noqa: E402
from cropseg.predict import predict_scene, with_refinement  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402

#: name -> (directions, texture base, stride) replacing the `texture` preset's
VARIANTS: dict[str, tuple[int, str, int]] = {
    "4-red+nir-s2": (4, "red+nir", 2),  # the preset before this benchmark
    "12-red+nir-s4": (12, "red+nir", 4),
    "8-brightness-s4": (8, "brightness", 4),
    "12-brightness-s4": (12, "brightness", 4),  # the preset
}


def variant(name: str) -> FeatureSpec:
    orientations, base, stride = VARIANTS[name]
    return replace(FEATURE_PRESETS["texture"], texture_orientations=orientations, texture_base=base,
                   texture_stride=stride)


def feature_ms(spec: FeatureSpec, repeats: int = 9) -> float:
    """Median single-thread ms for the features of one 512 px tile (with its halo) at step 4, as prediction does."""
    h = spec.halo
    refl = (np.random.default_rng(0).random((4, 512 + 2 * h, 512 + 2 * h)) * 0.3 + 0.05).astype(np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute_features(refl, spec, crop=h, step=4)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def datasets(workdir: Path, data: str) -> list[tuple[str, Path, Path, Path | None, Path, np.ndarray, Any]]:
    """(label, training scene, its truth, its AOI, evaluation scene, image-year truth, evaluation mask)."""
    out: list[tuple[str, Path, Path, Path | None, Path, np.ndarray, Any]] = [
        (label, train, truth, aoi, dst, read(dst / "actual.tif")[0], None)
        for label, train, truth, aoi, dst in directions(workdir, data)
    ]
    if data == "dwr" and (s2 := s2_data(workdir)) is not None:
        folder, west, _, east, east_mask = s2
        out.append(("Sentinel-2 west->east", folder, west, None, folder, east, east_mask))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    ap.add_argument("--data", choices=("dwr", "procedural"), default="dwr")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    sets = datasets(args.workdir, args.data)
    print("| directions, base, stride | " + " | ".join(f"{label} wF1 | non-crop F1" for label, *_ in sets)
          + " | mean wF1 | mean wF1 unrefined | features ms / tile |")
    print("|---|" + "---|---|" * len(sets) + "---|---|---|")
    for name in names:
        spec = variant(name)
        cells, means, raw_means = [], [], []
        for label, train_dir, truth, aoi, eval_dir, actual, mask in sets:
            scores: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for seed in seeds:
                cfg = Config().replace(train=replace(TrainConfig(), seed=seed))
                work = args.workdir / "texture_directions" / f"{name}_{label.replace(' ', '_')}_{seed}"
                res = train_from_files(train_dir, truth, work / "model", aoi=aoi, kind="lgbm", features=spec,
                                       config=cfg, label_field="CLASS1" if truth.suffix != ".tif" else None)
                for refine in (False, True):
                    trained = with_refinement(res.trained, replace(cfg.predict, refine="on" if refine else "off"))
                    pred_path = work / f"pred{'_refined' if refine else ''}.tif"
                    predict_scene(trained, open_scene(eval_dir), pred_path, resume=False)
                    pred = read(pred_path)[0]
                    if mask is not None:
                        pred = np.where(mask, pred, 255).astype(np.uint8)
                    rep = pixel_metrics(pred, actual)["report"]
                    w, n = rep["weighted avg"]["f1-score"], rep["non-crop"]["f1-score"]
                    scores[refine].append((w, n))
                    how = " refined" if refine else ""
                    print(f"  {name} {label} seed {seed}{how}: wF1 {w:.4f} non-crop F1 {n:.4f}", file=sys.stderr,
                          flush=True)
            wf1 = [w for w, _ in scores[True]]
            means.append(float(np.mean(wf1)))
            raw_means.append(float(np.mean([w for w, _ in scores[False]])))
            nc = [n for _, n in scores[True]]
            cells += [f"{np.mean(wf1):.3f} ({min(wf1):.3f}-{max(wf1):.3f})", f"{np.mean(nc):.3f}"]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(means):.3f} | {np.mean(raw_means):.3f} "
              f"| {feature_ms(spec):.0f} |", flush=True)


if __name__ == "__main__":
    main()
