"""Prediction: apply a model to a whole scene, window by window, into a COG on the input grid.

Output coding: uint8, 1 crop, 0 non-crop, 255 nodata (invalid image pixels and, with a UDM2,
unusable ones). The scene is never loaded whole: each window is read (with the halo its features
need), converted to reflectance, turned into features, classified and written.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from cropseg.config import Config, PredictConfig
from cropseg.errors import ConfigError, InvalidRasterError
from cropseg.features import compute_features, data_mask, sample_blocks
from cropseg.label import NODATA
from cropseg.manifest import record_stage
from cropseg.models import TrainedModel, UNetModel, load_model
from cropseg.progress import ProgressCallback
from cropseg.refine import Refinement, guided_filter
from cropseg.scene import ProductChoice, Scene, open_scene
from cropseg.streaming import Execution, PredictJob, predict_jobs

#: Model kinds refined when the config says ``auto``: the per-pixel tree models, for which it was measured to help
#: on every benchmark dataset (BENCHMARKS.md). Not the KNN (the reference's method, kept as it was; mixed
#: results) nor the U-Net (it sees the field already; no gain measured).
REFINED_KINDS: tuple[str, ...] = ("rf", "lgbm")


def predict_proba_window(
    trained: TrainedModel, reflectance: np.ndarray, valid: np.ndarray, halo: int = 0
) -> np.ndarray:
    """Crop probability of one window (NaN where ``valid`` is False).

    Args:
        trained: the model (with its refinement, if any: see :func:`with_refinement`).
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
    if trained.refine is not None:
        proba = _refined_proba(trained, trained.refine, reflectance, rows, cols, halo)
    elif trained.is_image_model:
        proba = _image_proba(trained, reflectance, rows, cols, halo)
    else:
        proba = _pixel_proba(trained, reflectance, valid, halo)
    out[valid] = proba[valid]
    return out


def _pixel_proba(
    trained: TrainedModel, reflectance: np.ndarray, valid: np.ndarray, halo: int, step: int = 1
) -> np.ndarray:
    """A per-pixel model's probabilities of the valid pixels, NaN elsewhere.

    With ``step`` > 1, of every ``step``-th pixel of each row and column of the window only: ``valid``
    is then that lattice's mask, (ceil(rows / step), ceil(cols / step)).
    """
    rows, cols = (n - 2 * halo for n in reflectance.shape[1:])
    # the features of the window proper only (computed from the halo around it), as model-ready rows
    lo = halo - trained.halo
    core = reflectance[:, lo : lo + rows + 2 * trained.halo, lo : lo + cols + 2 * trained.halo]
    feats = compute_features(core, trained.features, crop=trained.halo, step=step)
    proba = np.full(valid.shape, np.nan, np.float32)
    kept = np.empty(int(np.count_nonzero(valid)), np.float32)
    done = 0
    for block in sample_blocks(feats, valid, trained.sample_dtype, trained.row_block or valid.size):
        kept[done : done + len(block)] = trained.predict_proba(block)
        done += len(block)
    proba[valid] = kept
    return proba


def _image_proba(trained: TrainedModel, reflectance: np.ndarray, rows: int, cols: int, halo: int) -> np.ndarray:
    """A U-Net's probabilities of the window."""
    model = trained.model
    assert isinstance(model, UNetModel)
    # keep the largest stride-aligned context the window offers around the core
    net_halo = (halo - trained.features.halo) // trained.stride * trained.stride
    cut = halo - net_halo
    window = reflectance[:, cut : cut + rows + 2 * net_halo, cut : cut + cols + 2 * net_halo]
    feats = compute_features(reflectance, trained.features, crop=cut)  # the features of that window
    proba = model.predict_proba_image(feats, data_mask(window))
    return np.asarray(proba[net_halo : net_halo + rows, net_halo : net_halo + cols])


def _refined_proba(
    trained: TrainedModel, refinement: Refinement, reflectance: np.ndarray, rows: int, cols: int, halo: int
) -> np.ndarray:
    """The model's probabilities of the window and a margin around it, refined by the guided filter.

    The filter weighs every pixel holding data (not the UDM2: a margin pixel's usability is not
    known here), in the window and the margin alike, so that tiles equal the whole image. A per-pixel
    model classifies only the pixels of the filter's lattice (every ``refinement.step``-th).
    """
    margin = refinement.halo
    lo = halo - margin
    region = reflectance[:, lo : lo + rows + 2 * margin, lo : lo + cols + 2 * margin]
    data = data_mask(region)
    raw = replace(trained, refine=None)
    step = refinement.step
    # NaN where no data: the filter ignores those
    if raw.is_image_model:
        proba = predict_proba_window(raw, reflectance, data, lo)[::step, ::step]
    else:
        proba = _pixel_proba(raw, reflectance, data[::step, ::step], lo, step)
    bands = trained.features.bands
    guide = region[[bands.index("red"), bands.index("nir")]]
    refined = guided_filter(guide, proba, data, refinement)
    return refined[margin : margin + rows, margin : margin + cols]


def with_refinement(trained: TrainedModel, config: PredictConfig) -> TrainedModel:
    """``trained`` with the refinement ``config`` asks for (``auto``: the tree models, see :data:`REFINED_KINDS`)."""
    if config.refine == "off" or (config.refine == "auto" and trained.model.kind not in REFINED_KINDS):
        return replace(trained, refine=None)
    bands = trained.features.bands
    if "red" not in bands or "nir" not in bands:
        raise ConfigError(f"refinement needs red and NIR bands; the model's bands are {', '.join(bands)}. "
                          "Turn it off with --no-refine")
    return replace(trained, refine=Refinement(config.refine_radius, config.refine_eps, config.refine_step))


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
    trained = with_refinement(load_model(model_dir), cfg.predict)
    scene = open_scene(image, metadata, udm2, product=product, mask_haze=cfg.radiometry.mask_haze)
    path = predict_scene(
        trained, scene, out, tile_size or cfg.predict.tile_size, progress, execution=execution, resume=resume
    )
    record_stage(scene.image.parent, "predict", {
        "model_dir": str(model_dir), "model": trained.card.get("model"), "prediction": str(path),
    })
    return path
