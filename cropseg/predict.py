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
from cropseg.features import compute_features, to_samples
from cropseg.grid import Window
from cropseg.label import NODATA
from cropseg.manifest import record_stage
from cropseg.models import TrainedModel, load_model
from cropseg.progress import ProgressCallback, report
from cropseg.raster_io import RasterWriter
from cropseg.scene import ProductChoice, Scene, open_scene


def predict_window(trained: TrainedModel, reflectance: np.ndarray, valid: np.ndarray, halo: int = 0) -> np.ndarray:
    """Classify one window.

    Args:
        trained: the model.
        reflectance: float32 (bands, rows + 2*halo, cols + 2*halo).
        valid: boolean (rows, cols) for the window proper (without halo).
        halo: context pixels around the window in ``reflectance``.

    Returns:
        uint8 (rows, cols): 1 crop, 0 non-crop, 255 nodata.
    """
    feats = compute_features(reflectance, trained.features)
    if halo:
        feats = feats[:, halo:-halo, halo:-halo]
    out = np.full(valid.shape, NODATA, dtype=np.uint8)
    if valid.any():
        out[valid] = trained.predict(to_samples(feats, valid))
    return out


def predict_scene(
    trained: TrainedModel,
    scene: Scene,
    out: str | Path,
    tile_size: int = 512,
    progress: ProgressCallback | None = None,
) -> Path:
    """Predict every window of ``scene`` and write the prediction COG ``out`` (atomically)."""
    if scene.band_count != len(trained.features.bands):
        raise InvalidRasterError(
            f"the model was trained on {len(trained.features.bands)} bands ({', '.join(trained.features.bands)}) "
            f"but {scene.image} has {scene.band_count}; give an image with the same bands"
        )
    grid = scene.grid
    halo = trained.features.halo
    windows = list(grid.windows(tile_size))
    tags = {"CROPSEG_CODING": "1=crop 0=non-crop 255=nodata", "CROPSEG_MODEL": str(trained.card.get("model", ""))}
    with RasterWriter(out, grid, 1, "uint8", NODATA, descriptions=["crop"], tags=tags) as writer:
        for i, win in enumerate(windows):
            report(progress, "Predicting", i, len(windows))
            read_win = Window(win.col_off - halo, win.row_off - halo, win.width + 2 * halo, win.height + 2 * halo)
            refl = scene.read_reflectance(read_win, boundless=halo > 0)
            writer.write(predict_window(trained, refl, scene.read_valid(win), halo), win)
        report(progress, "Predicting", len(windows), len(windows))
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
) -> Path:
    """File edge: load a model directory, open a scene and write its prediction COG."""
    cfg = config or Config()
    trained = load_model(model_dir)
    scene = open_scene(image, metadata, udm2, product=product, mask_haze=cfg.radiometry.mask_haze)
    path = predict_scene(trained, scene, out, cfg.predict.tile_size, progress)
    record_stage(scene.image.parent, "predict", {
        "model_dir": str(model_dir), "model": trained.card.get("model"), "prediction": str(path),
    })
    return path
