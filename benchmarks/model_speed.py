"""Per-pixel classification speed of each model, apart from reading, features and writing.

`benchmarks/accuracy.py` times the whole `predict_scene` (read, features, classify, refine, write):
for the KNN reference that is almost all classification, for the default LightGBM it is mostly
features. This harness times the model and its features apart from reading and writing: each kind is
trained with the library defaults on data (a) of the accuracy benchmark (the `cropseg synth` scene of
the DWR test AOI, and the reverse); the features of a 1024 x 1024 px window of the other scene are
computed from the window and its halo (timed: "features"), and the model's ``predict_proba``
classifies them block by block as streaming prediction feeds it (the same row blocks and dtype;
timed: "classify"), on one thread (OpenMP, joblib and OpenCV limited to one; the streaming engine runs
one such worker per core). The last row of each direction is the default as `cropseg predict` runs it,
refinement included (the compiled trees classify every fourth pixel of each row and column, the guided
filter fills in the rest): `predict_proba_window` over the window, timed as a whole ("features +
classify"). Memory is managed as in prediction (`streaming.keep_heap_memory`: freed arrays stay in the
heap). Best of ``--repeats``; every row ran in the same invocation.

    python benchmarks/model_speed.py [--workdir /tmp/cropseg-bench] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DWR, dwr_scenes  # noqa: E402
from cropseg import accel  # noqa: E402
from cropseg.config import PredictConfig  # noqa: E402
from cropseg.features import compute_features, sample_blocks  # noqa: E402
from cropseg.predict import predict_proba_window, with_refinement  # noqa: E402
from cropseg.scene import open_scene  # noqa: E402
from cropseg.streaming import keep_heap_memory  # noqa: E402
from cropseg.train import train_from_files  # noqa: E402

#: (row label, model kind, compile the trees with lleaves)
ROWS = (("KNN reference", "knn", False), ("random forest", "rf", False), ("LightGBM", "lgbm", False),
        ("LightGBM, compiled", "lgbm", True))
DEFAULT_ROW = "LightGBM, compiled + refined (default)"
WINDOW = 1024
MAX_HALO = 96  # px of reflectance read around the window (at least any model's feature halo)


def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``run``, on one thread (OpenMP and BLAS limited to one)."""
    best = np.inf
    with threadpool_limits(1):
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    return float(best)


def with_halo(refl: np.ndarray, halo: int) -> np.ndarray:
    """The window of ``refl`` (which has MAX_HALO px around it) with ``halo`` px of context."""
    cut = MAX_HALO - halo
    return refl[:, cut : refl.shape[1] - cut, cut : refl.shape[2] - cut]


def classify_mpx_s(trained: Any, features: np.ndarray, repeats: int) -> float:
    """Best of ``repeats`` single-thread passes of the model over all pixels of ``features``, in Mpx/s."""
    valid = np.ones(features.shape[1:], bool)
    model = trained.model
    if hasattr(model, "estimator"):
        model.estimator.n_jobs = 1  # scikit-learn: no joblib workers

    def run() -> None:
        for block in sample_blocks(features, valid, trained.sample_dtype, trained.row_block or valid.size):
            trained.predict_proba(block)

    return valid.size / best_seconds(run, repeats) / 1e6


def features_mpx_s(trained: Any, refl: np.ndarray, repeats: int) -> tuple[np.ndarray, float]:
    """The features of the window inside ``refl``'s halo, and the best single-thread Mpx/s of computing them."""
    halo = trained.features.halo
    window = with_halo(refl, halo)
    out: list[np.ndarray] = []

    def run() -> None:
        out[:] = [compute_features(window, trained.features, crop=halo)]

    seconds = best_seconds(run, repeats)
    return out[0], WINDOW * WINDOW / seconds / 1e6


def pipeline_mpx_s(trained: Any, refl: np.ndarray, repeats: int) -> float:
    """Best single-thread Mpx/s of ``predict_proba_window`` (features, classification, refinement) on the window."""
    halo = trained.halo
    if halo > MAX_HALO:
        raise SystemExit(f"{DEFAULT_ROW}: halo {halo} > MAX_HALO {MAX_HALO}")
    window, valid = with_halo(refl, halo), np.ones((WINDOW, WINDOW), bool)
    return WINDOW * WINDOW / best_seconds(lambda: predict_proba_window(trained, window, valid, halo), repeats) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-bench"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    scenes = dwr_scenes(args.workdir, change_rate=0.1)
    cv2.setNumThreads(1)
    keep_heap_memory()
    print("| data | model | features | features Mpx/s | classify Mpx/s | features + classify Mpx/s | classify x KNN "
          "| features + classify x KNN |")
    print("|---|---|---|---|---|---|---|---|")
    for src, dst in (("test", "train"), ("train", "test")):
        scene = open_scene(scenes[dst])
        row0, col0 = (scene.grid.height - WINDOW) // 2 - MAX_HALO, (scene.grid.width - WINDOW) // 2 - MAX_HALO
        side = WINDOW + 2 * MAX_HALO
        refl = scene.read_reflectance()[:, row0 : row0 + side, col0 : col0 + side]
        models: dict[str, Any] = {}
        knn: tuple[float, float] | None = None
        for label, kind, compiled in ROWS:
            if kind not in models:
                models[kind] = train_from_files(
                    scenes[src], DWR / f"ground-truth-{src}.geojson", args.workdir / "model_speed" / f"{src}_{kind}",
                    aoi=DWR / f"aoi-{src}.geojson", kind=kind, label_field="CLASS1",
                ).trained
            trained = accel.accelerate(models[kind], "on" if compiled else "off")
            if trained.features.halo > MAX_HALO:
                raise SystemExit(f"{label}: feature halo {trained.features.halo} > MAX_HALO {MAX_HALO}")
            features, feat_speed = features_mpx_s(trained, refl, args.repeats)
            speed = classify_mpx_s(trained, features, args.repeats)
            both = 1 / (1 / feat_speed + 1 / speed)
            knn = knn or (speed, both)
            print(f"| DWR {src}->{dst} | {label} | {features.shape[0]} | {feat_speed:.2f} | {speed:.3f} | {both:.3f} "
                  f"| {speed / knn[0]:.1f} | {both / knn[1]:.1f} |", flush=True)
        assert knn is not None
        default = accel.accelerate(with_refinement(models["lgbm"], PredictConfig()), "on")
        whole = pipeline_mpx_s(default, refl, args.repeats)
        print(f"| DWR {src}->{dst} | {DEFAULT_ROW} | {len(default.features.names)} | | | {whole:.3f} | "
              f"| {whole / knn[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
