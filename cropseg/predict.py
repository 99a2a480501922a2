"""Prediction: apply a model to a whole scene, window by window, into a COG on the input grid.

Output coding: uint8, 1 crop, 0 non-crop, 255 nodata (invalid image pixels and, with a UDM2,
unusable ones). The scene is never loaded whole: each window is read (with the halo its features
need), converted to reflectance, turned into features, classified and written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropseg.config import Config
from cropseg.errors import InvalidRasterError
from cropseg.features import compute_features, data_mask, sample_blocks
from cropseg.label import NODATA
from cropseg.manifest import record_stage
from cropseg.models import TrainedModel, UNetModel, load_model
from cropseg.progress import ProgressCallback
from cropseg.scene import ProductChoice, Scene, open_scene
from cropseg.streaming import Execution, PredictJob, predict_jobs


def predict_proba_window(
    trained: TrainedModel, reflectance: np.ndarray, valid: np.ndarray, halo: int = 0
) -> np.ndarray:
    """Crop probability of one window (NaN where ``valid`` is False).

    Args:
        trained: the model.
        reflectance: float32 (bands, rows + 2*halo, cols + 2*halo).
        valid: boolean (rows, cols) for the window proper (without halo).
        halo: context pixels around the window in ``reflectance``; at least ``trained.halo``.
            For a U-Net, window offsets minus ``halo - features.halo`` (rounded down to the
            network's stride) should be multiples of ``trained.stride``.

    Returns:
        float32 (rows, cols).
    """
    if halo < trained.halo:
        raise ValueError(f"the model needs a halo of {trained.halo} px, got {halo}")
    rows, cols = valid.shape
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    if not valid.any():
        return out
    if trained.is_image_model:
        model = trained.model
        assert isinstance(model, UNetModel)
        # keep the largest stride-aligned context the window offers around the core
        net_halo = (halo - trained.features.halo) // trained.stride * trained.stride
        cut = halo - net_halo
        feats = compute_features(reflectance, trained.features)
        feats = feats[:, cut : cut + rows + 2 * net_halo, cut : cut + cols + 2 * net_halo]
        context = data_mask(reflectance[:, cut : cut + rows + 2 * net_halo, cut : cut + cols + 2 * net_halo])
        proba = model.predict_proba_image(feats, context)[net_halo : net_halo + rows, net_halo : net_halo + cols]
        out[valid] = proba[valid]
    else:
        # the features of the window proper only (computed from the halo around it), as model-ready rows
        core = reflectance[:, halo - trained.halo :, halo - trained.halo :] if halo > trained.halo else reflectance
        core = core[:, : rows + 2 * trained.halo, : cols + 2 * trained.halo]
        feats = compute_features(core, trained.features, crop=trained.halo)
        proba = np.empty(int(np.count_nonzero(valid)), np.float32)
        done = 0
        for rows_ in sample_blocks(feats, valid, trained.sample_dtype):
            proba[done : done + len(rows_)] = trained.predict_proba(rows_)
            done += len(rows_)
        out[valid] = proba
    return out


def predict_window(trained: TrainedModel, reflectance: np.ndarray, valid: np.ndarray, halo: int = 0) -> np.ndarray:
    """Classify one window.

    Args:
        trained: the model.
        reflectance: float32 (bands, rows + 2*halo, cols + 2*halo).
        valid: boolean (rows, cols) for the window proper (without halo).
        halo: context pixels around the window in ``reflectance`` (see :func:`predict_proba_window`).

    Returns:
        uint8 (rows, cols): 1 crop, 0 non-crop, 255 nodata.
    """
    proba = predict_proba_window(trained, reflectance, valid, halo)
    out = np.full(valid.shape, NODATA, dtype=np.uint8)
    out[valid] = (proba[valid] >= trained.threshold).astype(np.uint8)
    return out


def predict_scene(
    trained: TrainedModel,
    scene: Scene,
    out: str | Path,
    tile_size: int = 512,
    progress: ProgressCallback | None = None,
    *,
    execution: Execution | None = None,
    resume: bool = True,
) -> Path:
    """Predict every window of ``scene`` and write the prediction COG ``out`` (atomically).

    Tiles stream through :func:`cropseg.streaming.predict_jobs`: block-aligned windows read with the
    model's halo, classified by ``execution``'s workers (local threads by default; processes or Dask),
    written as they finish and journalled in ``OUT.partial/`` so that a killed run resumes (``resume``).
    """
    if scene.band_count != len(trained.features.bands):
        raise InvalidRasterError(
            f"the model was trained on {len(trained.features.bands)} bands ({', '.join(trained.features.bands)}) "
            f"but {scene.image} has {scene.band_count}; give an image with the same bands"
        )
    tags = {"CROPSEG_CODING": "1=crop 0=non-crop 255=nodata", "CROPSEG_MODEL": str(trained.card.get("model", ""))}
    job = PredictJob(scene, Path(out))
    predict_jobs(
        trained, [job], predict_window, tile_size=tile_size, execution=execution, resume=resume,
        progress=progress, tags=tags,
    )
    return Path(out)


def predict_from_files(
    model_dir: str | Path,
    image: str | Path,
    out: str | Path,
    *,
    metadata: str | Path | None = None,
    udm2: str | Path | None = None,
    product: ProductChoice = "auto",
    config: Config | None = None,
    progress: ProgressCallback | None = None,
    execution: Execution | None = None,
    resume: bool = True,
    tile_size: int | None = None,
) -> Path:
    """File edge: load a model directory, open a scene and write its prediction COG.

    ``execution`` picks local threads / processes or Dask; ``resume`` continues a killed run's
    journal; ``tile_size`` overrides the config's. Several scenes or a mosaic: :func:`cropseg.mosaic.predict_many`.
    """
    cfg = config or Config()
    trained = load_model(model_dir)
    scene = open_scene(image, metadata, udm2, product=product, mask_haze=cfg.radiometry.mask_haze)
    path = predict_scene(
        trained, scene, out, tile_size or cfg.predict.tile_size, progress, execution=execution, resume=resume
    )
    record_stage(scene.image.parent, "predict", {
        "model_dir": str(model_dir), "model": trained.card.get("model"), "prediction": str(path),
    })
    return path
