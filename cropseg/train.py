"""Training: sample labelled pixels, compute their features, fit and tune a model.

The pure part (:func:`sample_pixels`, :func:`block_groups`, :func:`fit_model`) works on arrays;
:func:`train_from_files` is the file edge used by the CLI: it opens the scene, rasterizes the
labels onto the image grid, extracts features tile by tile and writes the model directory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropseg.config import Config
from cropseg.features import FeatureSpec, band_names_for, compute_features
from cropseg.grid import Window
from cropseg.label import CROP, NONCROP, check_labels, load_labels
from cropseg.manifest import record_stage
from cropseg.models import TrainedModel, new_model, save_model
from cropseg.progress import ProgressCallback, report
from cropseg.scene import ProductChoice, Scene, open_scene


@dataclass
class TrainResult:
    """What training produced."""

    model_dir: Path
    trained: TrainedModel
    report: dict[str, Any]


def sample_pixels(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Flat indices of a stratified random sample of labelled pixels.

    Each class keeps its share of the labelled pixels; all labelled pixels are taken when there
    are no more than ``size``. Indices come back sorted (row-major order).
    """
    flat = labels.ravel()
    labelled = np.flatnonzero((flat == CROP) | (flat == NONCROP))
    if labelled.size <= size:
        return labelled
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for cls in (CROP, NONCROP):
        idx = labelled[flat[labelled] == cls]
        n = round(size * idx.size / labelled.size)
        chosen.append(rng.choice(idx, size=min(n, idx.size), replace=False))
    return np.sort(np.concatenate(chosen))


def block_groups(indices: np.ndarray, width: int, block: int) -> np.ndarray:
    """Spatial block id (``block`` x ``block`` pixels) of each flat pixel index, for grouped CV."""
    rows, cols = np.divmod(indices, width)
    blocks_per_row = -(-width // block)
    return np.asarray((rows // block) * blocks_per_row + cols // block)


def extract_samples(
    scene: Scene,
    spec: FeatureSpec,
    indices: np.ndarray,
    tile: int = 512,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Features (n, n_features) of the pixels at flat ``indices``, computed tile by tile with halos."""
    grid = scene.grid
    rows, cols = np.divmod(indices, grid.width)
    out = np.empty((indices.size, len(spec.names)), dtype=np.float32)
    windows = list(grid.windows(tile))
    halo = spec.halo
    for i, win in enumerate(windows):
        report(progress, "Extracting training features", i, len(windows))
        sel = np.flatnonzero(
            (rows >= win.row_off) & (rows < win.row_off + win.height)
            & (cols >= win.col_off) & (cols < win.col_off + win.width)
        )
        if sel.size == 0:
            continue
        read_win = Window(win.col_off - halo, win.row_off - halo, win.width + 2 * halo, win.height + 2 * halo)
        feats = compute_features(scene.read_reflectance(read_win, boundless=halo > 0), spec)
        r = rows[sel] - win.row_off + halo
        c = cols[sel] - win.col_off + halo
        out[sel] = feats[:, r, c].T
    report(progress, "Extracting training features", len(windows), len(windows))
    return out


def fit_model(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    spec: FeatureSpec,
    kind: str = "knn",
    config: Config | None = None,
) -> tuple[TrainedModel, dict[str, Any]]:
    """Fit and tune a model on samples; return it with its cross-validation report."""
    cfg = (config or Config()).train
    model = new_model(kind, k_values=cfg.k_values, cv_folds=cfg.cv_folds)
    start = time.perf_counter()
    cv = model.fit(X, y, groups)
    cv["fit_seconds"] = round(time.perf_counter() - start, 2)
    return TrainedModel(model=model, features=spec), cv


def train_from_files(
    image: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    metadata: str | Path | None = None,
    udm2: str | Path | None = None,
    aoi: str | Path | None = None,
    product: ProductChoice = "auto",
    kind: str = "knn",
    label_field: str | None = "CLASS1",
    crop_classes: Sequence[str] | None = None,
    config: Config | None = None,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a model on one scene and its ground truth, and write the model directory ``out``."""
    cfg = config or Config()
    classes = tuple(crop_classes) if crop_classes is not None else cfg.labels.crop_classes
    scene = open_scene(image, metadata, udm2, product=product, mask_haze=cfg.radiometry.mask_haze)
    spec = FeatureSpec(bands=band_names_for(scene.band_count))
    report(progress, "Reading labels and masks", 0, 1)
    valid = scene.read_valid()
    label_arr = load_labels(labels, scene.grid, aoi, label_field, classes, valid=valid)
    check_labels(label_arr, labels)
    report(progress, "Reading labels and masks", 1, 1)

    indices = sample_pixels(label_arr, cfg.train.sample_size, cfg.train.seed)
    y = label_arr.ravel()[indices]
    groups = block_groups(indices, scene.grid.width, cfg.train.cv_block)
    X = extract_samples(scene, spec, indices, cfg.predict.tile_size, progress)
    report(progress, f"Tuning {kind} by cross-validation", 0, 1)
    trained, cv = fit_model(X, y, groups, spec, kind, cfg)
    report(progress, f"Tuning {kind} by cross-validation", 1, 1)
    labelled = int(((label_arr == CROP) | (label_arr == NONCROP)).sum())
    training = {
        "image": str(scene.image),
        "metadata": str(scene.metadata) if scene.metadata else None,
        "udm2": str(scene.udm2) if scene.udm2 else None,
        "product": scene.product,
        "labels": str(labels),
        "aoi": str(aoi) if aoi else None,
        "label_field": label_field,
        "crop_classes": list(classes),
        "labelled_pixels": labelled,
        "crop_pixels": int((label_arr == CROP).sum()),
        "masked_pixels": int((~valid).sum()),
        "samples": int(indices.size),
        "sample_crop_fraction": round(float(y.mean()), 4),
        "sample_size_limit": cfg.train.sample_size,
        "cv_block": cfg.train.cv_block,
        "seed": cfg.train.seed,
    }
    model_dir = save_model(trained, out, extra={"cv": cv, "training": training})
    record_stage(scene.image.parent, "train", {
        "model_dir": str(model_dir), "model": kind, "params": trained.model.params, "labels": str(labels),
        "aoi": str(aoi) if aoi else None, "blocked_cv_f1_weighted": cv.get("blocked_cv_f1_weighted"),
    })
    return TrainResult(model_dir=model_dir, trained=trained, report={"cv": cv, "training": training})

