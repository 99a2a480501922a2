"""Training: sample labelled pixels, compute their features, fit and tune a model.

The pure part (:func:`sample_pixels`, :func:`block_groups`, :func:`fit_model`,
:func:`fit_image_model`, :func:`cv_summary`) works on arrays; :func:`train_from_files` is the file
edge used by the CLI: it opens the scene, rasterizes the labels onto the image grid, extracts
features tile by tile (or, for the U-Net, for the whole scene) and writes the model directory.

Validation: hyper-parameters are tuned on spatially blocked folds; the decision threshold is
chosen on the blocked out-of-fold predictions (``train.threshold``: macro F1 by default); the
card reports per-class precision / recall / F1 at that threshold, for the blocked folds and for
random pixel folds, whose optimism relative to the blocked score (the "gap") is shown to the user.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from cropseg.config import Config, FeaturesConfig, TrainConfig
from cropseg.errors import ConfigError, ModelError
from cropseg.features import FeatureSpec, band_names_for, compute_features, feature_preset
from cropseg.grid import Window
from cropseg.label import CROP, NONCROP, check_labels, load_labels
from cropseg.manifest import file_digest, read_manifest, record_stage
from cropseg.models import MODEL_KINDS, AnyModel, TrainedModel, UNetModel, save_model
from cropseg.models.base import THRESHOLDS, choose_threshold, f1_scores
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
        feats = compute_features(scene.read_reflectance(read_win, boundless=True), spec)
        r = rows[sel] - win.row_off + halo
        c = cols[sel] - win.col_off + halo
        out[sel] = feats[:, r, c].T
    report(progress, "Extracting training features", len(windows), len(windows))
    return out


#: Feature set of each model kind when the config says ``auto``.
DEFAULT_FEATURES: dict[str, str] = {"knn": "reference", "rf": "texture", "lgbm": "texture", "unet": "texture"}
_GRADIENT_MODELS = ("lgbm", "unet")


def resolve_features(kind: str, bands: tuple[str, ...], config: FeaturesConfig | None = None) -> FeatureSpec:
    """The feature set for a model kind: the config's preset (``auto``: the kind's own), with its overrides."""
    cfg = config or FeaturesConfig()
    preset = DEFAULT_FEATURES.get(kind, "reference") if cfg.preset == "auto" else cfg.preset
    spec = feature_preset(preset, bands)
    overrides: dict[str, Any] = {
        "indices": tuple(cfg.indices), "context": tuple(cfg.context), "scales": tuple(cfg.scales),
        "texture": tuple(float(p) for p in cfg.texture), "texture_windows": tuple(cfg.texture_windows),
        "texture_stride": cfg.texture_stride, "texture_orientations": cfg.texture_orientations,
        "texture_base": cfg.texture_base,
    }
    if any(overrides.values()):
        spec = replace(spec, **{k: v for k, v in overrides.items() if v})
    return spec


def check_training_options(kind: str, reweight: str, threshold: str) -> None:
    """Refuse unknown kinds and options, and RGD for models without a loss gradient."""
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model {kind!r}; choose one of: {', '.join(MODEL_KINDS)}")
    if reweight not in ("none", "rgd"):
        raise ConfigError(f"unknown re-weighting {reweight!r}; choose none or rgd")
    if reweight == "rgd" and kind not in _GRADIENT_MODELS:
        raise ConfigError(
            f"RGD re-weighting applies to gradient-trained models ({', '.join(_GRADIENT_MODELS)}), not to {kind}"
        )
    if threshold not in ("f1_macro", "f1_weighted", "none"):
        raise ConfigError(f"unknown threshold rule {threshold!r}; choose f1_macro, f1_weighted or none")


def build_model(kind: str, cfg: TrainConfig) -> AnyModel:
    """An unfitted model of ``kind`` with the config's settings."""
    if kind == "knn":
        return MODEL_KINDS["knn"](k_values=cfg.k_values, cv_folds=cfg.cv_folds)  # type: ignore[call-arg]
    if kind == "rf":
        return MODEL_KINDS["rf"](  # type: ignore[call-arg]
            leaf_values=cfg.rf_leaf_values, n_estimators=cfg.rf_trees, max_depth=cfg.rf_max_depth,
            cv_folds=cfg.cv_folds, seed=cfg.seed,
        )
    if kind == "lgbm":
        return MODEL_KINDS["lgbm"](  # type: ignore[call-arg]
            grid=tuple({"num_leaves": int(n)} for n in cfg.lgbm_leaves), cv_folds=cfg.cv_folds,
            max_rounds=cfg.lgbm_rounds, seed=cfg.seed,
        )
    if kind == "unet":
        if len(cfg.unet_widths) != 3:
            raise ConfigError(f"train.unet_widths needs 3 channel counts, got {list(cfg.unet_widths)}")
        a, b, c = (int(w) for w in cfg.unet_widths)
        return UNetModel(
            widths=(a, b, c), steps=cfg.unet_steps, batch=cfg.unet_batch, patch=cfg.unet_patch, lr=cfg.unet_lr,
            seed=cfg.seed, device=cfg.device,
        )
    raise ConfigError(f"unknown model {kind!r}; choose one of: {', '.join(MODEL_KINDS)}")


def _scores(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    return {k: round(v, 4) for k, v in f1_scores(y, proba >= threshold).items()}


def cv_summary(
    y: np.ndarray,
    oof: np.ndarray,
    y_random: np.ndarray,
    random_oof: np.ndarray,
    rule: str = "f1_macro",
) -> dict[str, Any]:
    """Choose the threshold on blocked out-of-fold predictions and score both kinds of split.

    Returns:
        ``threshold``, ``threshold_rule``, per-class scores ``blocked`` and ``random`` at that
        threshold (and ``blocked_at_0.5``), ``blocked_cv_f1_weighted``, ``random_cv_f1_weighted`` and
        their ``gap``.
    """
    threshold = choose_threshold(y, oof, rule)  # type: ignore[arg-type]
    blocked = _scores(y, oof, threshold)
    random = _scores(y_random, random_oof, threshold)
    return {
        "threshold": threshold,
        "threshold_rule": rule,
        "threshold_candidates": [float(THRESHOLDS[0]), float(THRESHOLDS[-1])],
        "blocked": blocked,
        "blocked_at_0.5": _scores(y, oof, 0.5),
        "random": random,
        "blocked_cv_f1_weighted": blocked["f1_weighted"],
        "random_cv_f1_weighted": random["f1_weighted"],
        "gap_f1_weighted": round(random["f1_weighted"] - blocked["f1_weighted"], 4),
    }


def fit_model(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    spec: FeatureSpec,
    kind: str = "knn",
    config: Config | None = None,
    *,
    reweight: str | None = None,
    rgd_clip: float | None = None,
) -> tuple[TrainedModel, dict[str, Any]]:
    """Fit and tune a per-pixel model on samples; return it with its cross-validation report.

    Args:
        X: (n, n_features) float32 features, in ``spec.names`` order.
        y: (n,) 1 crop, 0 non-crop.
        groups: (n,) spatial block ids for the blocked folds.
        spec: the features.
        kind: ``knn``, ``rf`` or ``lgbm``.
        config: settings (``train`` section).
        reweight: ``none`` or ``rgd`` (default: the config's).
        rgd_clip: RGD clip ``T`` (default: the config's).
    """
    cfg = (config or Config()).train
    reweight = reweight or cfg.reweight
    clip = float(rgd_clip if rgd_clip is not None else cfg.rgd_clip)
    check_training_options(kind, reweight, cfg.threshold)
    model = build_model(kind, cfg)
    if isinstance(model, UNetModel):
        raise ModelError("the U-Net trains on whole images: use fit_image_model or train_from_files")
    start = time.perf_counter()
    cv = model.fit(X, y, groups, reweight=cast(Any, reweight), rgd_clip=clip)
    cv["fit_seconds"] = round(time.perf_counter() - start, 2)
    oof, random_oof = cv.pop("oof_proba"), cv.pop("random_oof_proba")
    cv.update(cv_summary(y, oof, y, random_oof, cfg.threshold))
    cv["reweight"] = {"method": reweight, "clip": clip} if reweight == "rgd" else {"method": "none"}
    return TrainedModel(model=model, features=spec, threshold=cv["threshold"]), cv


def fit_image_model(
    features: np.ndarray,
    labels: np.ndarray,
    spec: FeatureSpec,
    config: Config | None = None,
    *,
    reweight: str | None = None,
    rgd_clip: float | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[TrainedModel, dict[str, Any]]:
    """Train the U-Net on a whole feature image; return it with its hold-out report.

    Args:
        features: float32 (n_features, rows, cols) in ``spec.names`` order.
        labels: uint8 (rows, cols): 1 crop, 0 non-crop, 255 nodata.
        spec: the features.
        config: settings (``train`` section; ``unet_block`` is the hold-out block size).
        reweight: ``none`` or ``rgd`` (default: the config's).
        rgd_clip: RGD clip ``T`` (default: the config's).
        progress: optional progress callback.
    """
    cfg = (config or Config()).train
    reweight = reweight or cfg.reweight
    clip = float(rgd_clip if rgd_clip is not None else cfg.rgd_clip)
    check_training_options("unet", reweight, cfg.threshold)
    model = build_model("unet", cfg)
    assert isinstance(model, UNetModel)
    rows, cols = labels.shape
    blocks = block_groups(np.arange(rows * cols), cols, cfg.unet_block).reshape(rows, cols)
    start = time.perf_counter()
    cv = model.fit_image(features, labels, blocks, reweight=cast(Any, reweight), rgd_clip=clip, progress=progress)
    cv["fit_seconds"] = round(time.perf_counter() - start, 2)
    y, oof = cv.pop("oof_labels"), cv.pop("oof_proba")
    y_random, random_oof = cv.pop("random_oof_labels"), cv.pop("random_oof_proba")
    cv.update(cv_summary(y, oof, y_random, random_oof, cfg.threshold))
    cv["reweight"] = {"method": reweight, "clip": clip} if reweight == "rgd" else {"method": "none"}
    return TrainedModel(model=model, features=spec, threshold=cv["threshold"]), cv


def read_scene_features(scene: Scene, spec: FeatureSpec) -> np.ndarray:
    """Features (n_features, rows, cols) of a whole scene (the U-Net trains on whole images)."""
    return compute_features(scene.read_reflectance(), spec)


def _manifest_record(folder: Path) -> dict[str, Any] | None:
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    keep = ("provider", "created", "item_ids", "ids", "seed", "change_rate", "clouds", "product")
    return {
        "path": str(folder / "manifest.json"),
        "sha256": file_digest(folder / "manifest.json"),
        **{k: manifest[k] for k in keep if k in manifest},
    }


def train_from_files(
    image: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    metadata: str | Path | None = None,
    udm2: str | Path | None = None,
    aoi: str | Path | None = None,
    product: ProductChoice = "auto",
    kind: str | None = None,
    label_field: str | None = "CLASS1",
    crop_classes: Sequence[str] | None = None,
    config: Config | None = None,
    progress: ProgressCallback | None = None,
    reweight: str | None = None,
    rgd_clip: float | None = None,
    features: str | FeatureSpec | None = None,
) -> TrainResult:
    """Train a model on one scene and its ground truth, and write the model directory ``out``.

    Args:
        image: the image GeoTIFF or scene folder.
        labels: ground-truth polygons or a label raster.
        out: the model directory to write.
        metadata: Planet metadata XML (found beside the image when not given).
        udm2: UDM2 (found beside the image when not given).
        aoi: area of interest of the labels (outside: not labelled).
        product: how DNs become reflectance.
        kind: ``knn``, ``rf``, ``lgbm`` or ``unet`` (default: the config's ``train.model``).
        label_field: class attribute of the polygons.
        crop_classes: its values that are crop.
        config: settings.
        progress: optional progress callback.
        reweight: ``none`` or ``rgd`` (default: the config's).
        rgd_clip: RGD clip ``T`` (default: the config's).
        features: a feature preset name or a :class:`FeatureSpec` (default: the config's).
    """
    cfg = config or Config()
    kind = kind or cfg.train.model
    reweight = reweight or cfg.train.reweight
    check_training_options(kind, reweight, cfg.train.threshold)
    classes = tuple(crop_classes) if crop_classes is not None else cfg.labels.crop_classes
    scene = open_scene(image, metadata, udm2, product=product, mask_haze=cfg.radiometry.mask_haze)
    bands = band_names_for(scene.band_count)
    if isinstance(features, FeatureSpec):
        spec = features.with_bands(bands)
    elif features is not None:
        spec = resolve_features(kind, bands, FeaturesConfig(preset=features))
    else:
        spec = resolve_features(kind, bands, cfg.features)
    report(progress, "Reading labels and masks", 0, 1)
    valid = scene.read_valid()
    label_arr = load_labels(labels, scene.grid, aoi, label_field, classes, valid=valid)
    check_labels(label_arr, labels)
    report(progress, "Reading labels and masks", 1, 1)

    labelled = int(((label_arr == CROP) | (label_arr == NONCROP)).sum())
    if kind == "unet":
        report(progress, "Computing features", 0, 1)
        feats = read_scene_features(scene, spec)
        report(progress, "Computing features", 1, 1)
        trained, cv = fit_image_model(feats, label_arr, spec, cfg, reweight=reweight, rgd_clip=rgd_clip,
                                      progress=progress)
        del feats
        n_samples, sample_limit, crop_fraction = labelled, None, float((label_arr == CROP).sum() / labelled)
        block = cfg.train.unet_block
    else:
        limit = cfg.train.sample_size if kind == "knn" else cfg.train.tree_sample_size
        indices = sample_pixels(label_arr, limit, cfg.train.seed)
        y = label_arr.ravel()[indices]
        groups = block_groups(indices, scene.grid.width, cfg.train.cv_block)
        X = extract_samples(scene, spec, indices, cfg.predict.tile_size, progress)
        report(progress, f"Tuning {kind} by cross-validation", 0, 1)
        trained, cv = fit_model(X, y, groups, spec, kind, cfg, reweight=reweight, rgd_clip=rgd_clip)
        report(progress, f"Tuning {kind} by cross-validation", 1, 1)
        n_samples, sample_limit, crop_fraction = int(indices.size), limit, float(y.mean())
        block = cfg.train.cv_block
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
        "samples": n_samples,
        "sample_crop_fraction": round(crop_fraction, 4),
        "sample_size_limit": sample_limit,
        "cv_block": block,
        "seed": cfg.train.seed,
        "manifest": _manifest_record(scene.image.parent),
    }
    model_dir = save_model(trained, out, extra={"cv": cv, "training": training})
    record_stage(scene.image.parent, "train", {
        "model_dir": str(model_dir), "model": kind, "params": trained.model.params, "labels": str(labels),
        "aoi": str(aoi) if aoi else None, "blocked_cv_f1_weighted": cv.get("blocked_cv_f1_weighted"),
    })
    return TrainResult(model_dir=model_dir, trained=trained, report={"cv": cv, "training": training})

