"""Which features does the default model need? Accuracy against cost, measured in one run.

Every row trains LightGBM with the library defaults (blocked CV, threshold on validation) on data (a)
of benchmarks/accuracy.py (the `cropseg synth` scenes of the DWR AOIs, both directions), predicts
the whole evaluation scene and scores it against the image-year truth. "ms / tile" is the
single-thread time to compute the features of one 512 px tile (read with its halo) and classify them
with the lleaves-compiled trees, the part of streaming prediction that grows with the feature set.

    python benchmarks/feature_sets.py [--workdir /tmp/cropseg-bench] [--data dwr|procedural] [--sets NAME,NAME]
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

from benchmarks._data import DWR, PROCEDURAL_PAIRS, dwr_scenes, procedural_scene  # noqa: E402
from cropseg import accel  # noqa: E402
from cropseg.evaluate import pixel_metrics  # noqa: E402
from cropseg.features import FeatureSpec, feature_preset  # noqa: E402
from cropseg.predict import predict_proba_window, predict_scene  # noqa: E402
from cropseg.raster_io import read  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402

SPECTRAL = ("ndvi", "ndwi", "evi2", "brightness")


def _set(context: tuple[str, ...] = ("nir", "red", "ndvi"), scales: tuple[int, ...] = (3, 7, 15, 31),
         texture: tuple[float, ...] = (), windows: tuple[int, ...] = (15,)) -> FeatureSpec:
    """The 4 bands, 4 indices, mean / std of ``context`` over ``scales`` px, row texture at ``texture`` periods.

    The row texture takes the ``texture`` preset's directions, base image and window stride (rows measured
    before those existed used four directions on red + NIR and every pixel of the windows: see BENCHMARKS.md).
    """
    return replace(feature_preset("texture"), indices=SPECTRAL, context=context, scales=scales, texture=texture,
                   texture_windows=windows)


#: name -> feature set: the 4 PlanetScope bands, 4 indices, mean / std of some of them at some window sizes, and
#: row texture at some periods averaged over some windows
SETS: dict[str, FeatureSpec] = {
    "spectral": FeatureSpec(indices=SPECTRAL),
    "context": _set(),
    "nir-ndvi-4": _set(("nir", "ndvi")),
    "nir-red-ndvi-3": _set(scales=(3, 9, 31)),
    "nir-ndvi-3": _set(("nir", "ndvi"), (3, 9, 31)),
    "brightness-ndvi-3": _set(("brightness", "ndvi"), (3, 9, 31)),
    "nir-ndvi-2": _set(("nir", "ndvi"), (5, 21)),
    "texture-3-4-5": _set(texture=(3.0, 4.0, 5.0)),
    "texture-4": _set(texture=(4.0,)),
    "texture-2.5-4": _set(texture=(2.5, 4.0)),
    "texture-2-4": _set(texture=(2.0, 4.0)),
    "texture-2-3-4": _set(texture=(2.0, 3.0, 4.0)),
    "texture-4-w15-41": _set(texture=(4.0,), windows=(15, 41)),
    "texture-4-w15-63": _set(texture=(4.0,), windows=(15, 63)),
    "texture-4-w15-101": _set(texture=(4.0,), windows=(15, 101)),
    "texture-4-w15-31-63": _set(texture=(4.0,), windows=(15, 31, 63)),
    "texture-2.5-4-w15-63": _set(texture=(2.5, 4.0), windows=(15, 63)),  # the `texture` preset
    "nir-ndvi-3-texture-2.5-4-w15-63": _set(("nir", "ndvi"), (3, 9, 31), texture=(2.5, 4.0), windows=(15, 63)),
    "context63-texture-4": _set(scales=(3, 7, 15, 31, 63), texture=(4.0,)),
    "nir-ndvi-3-texture-4": _set(("nir", "ndvi"), (3, 9, 31), texture=(4.0,)),
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
    ap.add_argument("--data", choices=("dwr", "procedural"), default="dwr",
                    help="dwr: data (a) of the accuracy benchmark; procedural: the scene pairs used to choose settings")
    ap.add_argument("--header", action=argparse.BooleanOptionalAction, default=True, help="print the table head")
    args = ap.parse_args()
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    runs = directions(args.workdir, args.data)
    if args.header:
        print("| features | context of | window sizes | texture periods | texture windows | n | "
              + " | ".join(f"{label} wF1 | non-crop F1" for label, *_ in runs) + " | mean wF1 | ms / tile |")
        print("|---|---|---|---|---|---|" + "---|---|" * len(runs) + "---|---|")
    for name in names:
        spec = SETS[name]
        cells, wf1s, ms = [], [], 0.0
        for _, train_dir, truth, aoi, eval_dir in runs:
            work = args.workdir / "feature_sets" / f"{name}_{train_dir.name}"
            res = train_from_files(train_dir, truth, work / "model", aoi=aoi, kind="lgbm", features=spec,
                                   label_field="CLASS1")
            trained = accel.accelerate(res.trained, "on")
            pred_path = work / "pred.tif"
            predict_scene(trained, open_scene(eval_dir), pred_path, resume=False)
            rep = pixel_metrics(read(pred_path)[0], read(eval_dir / "actual.tif")[0])["report"]
            wf1s.append(rep["weighted avg"]["f1-score"])
            cells += [f"{rep['weighted avg']['f1-score']:.3f}", f"{rep['non-crop']['f1-score']:.3f}"]
            if not ms:
                ms = tile_ms(trained, eval_dir)
        head = [name, ", ".join(spec.context) or "-", ", ".join(map(str, spec.scales)) or "-",
                ", ".join(f"{p:g}" for p in spec.texture) or "-",
                ", ".join(map(str, spec.texture_windows)) if spec.texture else "-", str(len(spec.names))]
        print("| " + " | ".join([*head, *cells, f"{np.mean(wf1s):.3f}", f"{ms:.0f}"]) + " |", flush=True)


def directions(workdir: Path, data: str) -> list[tuple[str, Path, Path, Path | None, Path]]:
    """(label, training scene, training truth, its AOI or None, evaluation scene) of each direction of ``data``."""
    if data == "procedural":
        return [(f"procedural {src}->{dst}", procedural_scene(workdir, src),
                 procedural_scene(workdir, src) / "labels.tif", None, procedural_scene(workdir, dst))
                for src, dst in PROCEDURAL_PAIRS]
    scenes = dwr_scenes(workdir, change_rate=0.1)
    return [(f"DWR {src}->{dst}", scenes[src], DWR / f"ground-truth-{src}.geojson", DWR / f"aoi-{src}.geojson",
             scenes[dst]) for src, dst in (("test", "train"), ("train", "test"))]

if __name__ == "__main__":
    main()
