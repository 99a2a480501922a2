"""Which features does the default model need? Accuracy against cost, measured in one run.

Every row trains LightGBM with the library defaults (blocked CV, threshold on validation) on data (a)
of benchmarks/accuracy.py (the `cropseg synth` scenes of the DWR AOIs, both directions), predicts
the whole evaluation scene and scores it against the image-year truth. "ms / tile" is the
single-thread time to compute the features of one 512 px tile (read with its halo) and classify them
with the lleaves-compiled trees, the part of streaming prediction that grows with the feature set.

    python benchmarks/feature_sets.py [--workdir /tmp/cropseg-bench] [--sets NAME,NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DWR, dwr_scenes  # noqa: E402
from cropseg import accel  # noqa: E402
from cropseg.evaluate import pixel_metrics  # noqa: E402
from cropseg.features import FeatureSpec  # noqa: E402
from cropseg.predict import predict_proba_window, predict_scene  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402

SPECTRAL = ("ndvi", "ndwi", "evi2", "brightness")
#: name -> feature set: the 4 PlanetScope bands, 4 indices, mean / std of some of them at some window sizes, and
#: row texture at some periods
SETS: dict[str, FeatureSpec] = {
    "spectral": FeatureSpec(indices=SPECTRAL),
    "context": FeatureSpec(indices=SPECTRAL, context=("nir", "red", "ndvi"), scales=(3, 7, 15, 31)),
    "nir-ndvi-4": FeatureSpec(indices=SPECTRAL, context=("nir", "ndvi"), scales=(3, 7, 15, 31)),
    "nir-red-ndvi-3": FeatureSpec(indices=SPECTRAL, context=("nir", "red", "ndvi"), scales=(3, 9, 31)),
    "nir-ndvi-3": FeatureSpec(indices=SPECTRAL, context=("nir", "ndvi"), scales=(3, 9, 31)),
    "brightness-ndvi-3": FeatureSpec(indices=SPECTRAL, context=("brightness", "ndvi"), scales=(3, 9, 31)),
    "nir-ndvi-2": FeatureSpec(indices=SPECTRAL, context=("nir", "ndvi"), scales=(5, 21)),
    "texture-3-4-5": FeatureSpec(indices=SPECTRAL, context=("nir", "red", "ndvi"), scales=(3, 7, 15, 31),
                                 texture=(3.0, 4.0, 5.0)),
    "texture-4": FeatureSpec(indices=SPECTRAL, context=("nir", "red", "ndvi"), scales=(3, 7, 15, 31), texture=(4.0,)),
    "nir-ndvi-3-texture-4": FeatureSpec(indices=SPECTRAL, context=("nir", "ndvi"), scales=(3, 9, 31), texture=(4.0,)),
}


def tile_ms(trained: Any, scene_dir: Path, repeats: int = 8) -> float:
    """Single-thread ms to compute features and classify one 512 px tile (with its halo)."""
    scene = open_scene(scene_dir)
    h = trained.halo
    refl = scene.read_reflectance()[:, 600 - h : 1112 + h, 600 - h : 1112 + h]
    valid = np.ones((512, 512), bool)
    predict_proba_window(trained, refl, valid, h)
    t0 = time.perf_counter()
    for _ in range(repeats):
        predict_proba_window(trained, refl, valid, h)
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated names of SETS")
    ap.add_argument("--header", action=argparse.BooleanOptionalAction, default=True, help="print the table head")
    args = ap.parse_args()
    scenes = dwr_scenes(args.workdir, change_rate=0.1)
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    if args.header:
        print("| features | context of | window sizes | texture periods | n | DWR test->train wF1 | non-crop F1 "
              "| DWR train->test wF1 | non-crop F1 | mean wF1 | ms / tile |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        spec = SETS[name]
        cells, wf1s, ms = [], [], 0.0
        for src, dst in (("test", "train"), ("train", "test")):
            work = args.workdir / "feature_sets" / f"{name}_{src}"
            res = train_from_files(scenes[src], DWR / f"ground-truth-{src}.geojson", work / "model",
                                   aoi=DWR / f"aoi-{src}.geojson", kind="lgbm", features=spec, label_field="CLASS1")
            trained = accel.accelerate(res.trained, "on")
            pred_path = work / "pred.tif"
            predict_scene(trained, open_scene(scenes[dst]), pred_path, resume=False)
            rep = pixel_metrics(read(pred_path)[0], read(scenes[dst] / "actual.tif")[0])["report"]
            wf1s.append(rep["weighted avg"]["f1-score"])
            cells += [f"{rep['weighted avg']['f1-score']:.3f}", f"{rep['non-crop']['f1-score']:.3f}"]
            if src == "test":
                ms = tile_ms(trained, scenes[dst])
        head = [name, ", ".join(spec.context) or "-", ", ".join(map(str, spec.scales)) or "-",
                ", ".join(f"{p:g}" for p in spec.texture) or "-", str(len(spec.names))]
        print("| " + " | ".join([*head, *cells, f"{np.mean(wf1s):.3f}", f"{ms:.0f}"]) + " |", flush=True)


if __name__ == "__main__":
    main()
