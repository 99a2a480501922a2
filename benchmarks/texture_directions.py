"""How many directions should the row-texture filters take, and on which image? Measured over three seeds.

Fields lie at every angle, and the training area need not have the angles of the area a model is
used on (the DWR test AOI's fields run north-south, half of the train AOI's are 20 to 45 degrees
off). Each variant replaces the row-texture settings of the `texture` preset (directions, the image
the Gabor filters see, the stride of the window means); LightGBM with the library defaults is trained
with seeds 0, 1 and 2 (the training sample and the boosting's bagging), predicts the evaluation scene
as `cropseg predict` does (refined, step 4; the last column: without the refinement) and is scored
against the image-year truth, each by benchmarks/accuracy.py's `run_one` (which prints every run as it
goes; the table comes at the end).

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

from benchmarks.accuracy import run_one, s2_data  # noqa: E402
from benchmarks.feature_sets import directions  # noqa: E402
from cropseg.config import Config, FeaturesConfig, TrainConfig  # noqa: E402
from cropseg.features import PLANETSCOPE_BANDS, FeatureSpec, compute_features  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.train import resolve_features  # noqa: E402

#: name -> (directions, texture base, stride) replacing the `texture` preset's
VARIANTS: dict[str, tuple[int, str, int]] = {
    "4-red+nir-s2": (4, "red+nir", 2),  # the preset before this benchmark
    "12-red+nir-s4": (12, "red+nir", 4),
    "8-brightness-s4": (8, "brightness", 4),
    "12-brightness-s4": (12, "brightness", 4),  # the preset
}
LGBM = ("LightGBM", "lgbm", "none")


def variant(name: str) -> FeaturesConfig:
    """The `[features]` overrides of a variant (LightGBM's preset is `texture`)."""
    orientations, base, stride = VARIANTS[name]
    return FeaturesConfig(texture_orientations=orientations, texture_base=base, texture_stride=stride)


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


def datasets(workdir: Path, data: str) -> list[tuple[str, Path, Path, Path | None, Path, dict[str, Any], Any]]:
    """(label, training scene, its truth, its AOI, evaluation scene, {"actual": image-year truth}, evaluation mask)."""
    out: list[tuple[str, Path, Path, Path | None, Path, dict[str, Any], Any]] = [
        (label, train, truth, aoi, dst, {"actual": read(dst / "actual.tif")[0]}, None)
        for label, train, truth, aoi, dst in directions(workdir, data)
    ]
    if data == "dwr" and (s2 := s2_data(workdir)) is not None:
        folder, west, _, east, east_mask = s2
        out.append(("Sentinel-2 west->east", folder, west, None, folder, {"actual": east}, east_mask))
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
    lines = ["| directions, base, stride | " + " | ".join(f"{label} wF1 | non-crop F1" for label, *_ in sets)
             + " | mean wF1 | mean wF1 unrefined | features ms / tile |",
             "|---|" + "---|---|" * len(sets) + "---|---|---|"]
    for name in names:
        cells, means, raw_means = [], [], []
        for label, train_dir, truth, aoi, eval_dir, truths, mask in sets:
            results = []  # each seed's model, unrefined and refined (benchmarks/accuracy.py's rows)
            for seed in seeds:
                cfg = Config().replace(features=variant(name), train=replace(TrainConfig(), seed=seed))
                work = args.workdir / "texture_directions" / f"{name}_{seed}"
                results += run_one(label, LGBM, train_dir, truth, aoi, eval_dir, truths, work, cfg, mask)
            wf1 = [r.metrics["f1_weighted"] for r in results if r.refined]
            nc = [r.metrics["f1_noncrop"] for r in results if r.refined]
            means.append(float(np.mean(wf1)))
            raw_means.append(float(np.mean([r.metrics["f1_weighted"] for r in results if not r.refined])))
            cells += [f"{np.mean(wf1):.3f} ({min(wf1):.3f}-{max(wf1):.3f})", f"{np.mean(nc):.3f}"]
        spec = resolve_features("lgbm", PLANETSCOPE_BANDS, variant(name))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(means):.3f} | {np.mean(raw_means):.3f} "
                     f"| {feature_ms(spec):.0f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
