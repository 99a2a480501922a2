"""Per-pixel classification speed of each model, apart from reading, features and writing.

`benchmarks/accuracy.py` times the whole `predict_scene` (read, features, classify, refine, write):
for the KNN reference that is almost all classification, for the default LightGBM it is mostly
features. This harness times only the model: each kind is trained with the library defaults on data
(a) of the accuracy benchmark (the `cropseg synth` scene of the DWR test AOI, and the reverse), the
features of a 1024 x 1024 px window of the other scene are computed once (not timed), and the
model's ``predict_proba`` classifies them block by block as streaming prediction feeds it (the same
row blocks and dtype), on one thread (OpenMP and joblib limited to one; the streaming engine runs one
such worker per core). Every row ran in the same invocation.

    python benchmarks/model_speed.py [--workdir /tmp/cropseg-bench] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DWR, dwr_scenes  # noqa: E402
from cropseg import accel  # noqa: E402
from cropseg.features import compute_features, sample_blocks  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402

#: (row label, model kind, compile the trees with lleaves)
ROWS = (("KNN reference", "knn", False), ("random forest", "rf", False), ("LightGBM", "lgbm", False),
        ("LightGBM, compiled", "lgbm", True))
WINDOW = 1024


def classify_mpx_s(trained: Any, features: np.ndarray, repeats: int) -> float:
    """Best of ``repeats`` single-thread passes of the model over all pixels of ``features``, in Mpx/s."""
    valid = np.ones(features.shape[1:], bool)
    model = trained.model
    if hasattr(model, "estimator"):
        model.estimator.n_jobs = 1  # scikit-learn: no joblib workers
    best = np.inf
    with threadpool_limits(1):
        for _ in range(repeats):
            start = time.perf_counter()
            for block in sample_blocks(features, valid, trained.sample_dtype, trained.row_block or valid.size):
                trained.predict_proba(block)
            best = min(best, time.perf_counter() - start)
    return valid.size / best / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    scenes = dwr_scenes(args.workdir, change_rate=0.1)
    print("| data | model | features | classify Mpx/s (one thread) | x KNN |")
    print("|---|---|---|---|---|")
    for src, dst in (("test", "train"), ("train", "test")):
        scene = open_scene(scenes[dst])
        row0, col0 = (scene.grid.height - WINDOW) // 2, (scene.grid.width - WINDOW) // 2
        refl = scene.read_reflectance()[:, row0 : row0 + WINDOW, col0 : col0 + WINDOW]
        models: dict[str, Any] = {}
        knn_speed = 0.0
        for label, kind, compiled in ROWS:
            if kind not in models:
                models[kind] = train_from_files(
                    scenes[src], DWR / f"ground-truth-{src}.geojson", args.workdir / "model_speed" / f"{src}_{kind}",
                    aoi=DWR / f"aoi-{src}.geojson", kind=kind, label_field="CLASS1",
                ).trained
            trained = accel.accelerate(models[kind], "on" if compiled else "off")
            features = compute_features(refl, trained.features)
            speed = classify_mpx_s(trained, features, args.repeats)
            knn_speed = knn_speed or speed
            print(f"| DWR {src}->{dst} | {label} | {features.shape[0]} | {speed:.3f} | {speed / knn_speed:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
