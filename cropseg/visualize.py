"""Figures: PNG panels comparing image, label truth and prediction.

Rendering uses matplotlib's non-interactive Agg backend; nothing here needs a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropseg.label import CROP, NODATA, NONCROP
from cropseg.raster_io import atomic_path


def stretch(rgb: np.ndarray, valid: np.ndarray | None = None, low: float = 2, high: float = 98) -> np.ndarray:
    """Percentile contrast stretch of (3, rows, cols) reflectance to float (rows, cols, 3) in [0, 1]."""
    img = np.moveaxis(rgb.astype(np.float32), 0, -1)
    sample = img[valid] if valid is not None and valid.any() else img.reshape(-1, img.shape[-1])
    lo = np.percentile(sample, low, axis=0)
    hi = np.percentile(sample, high, axis=0)
    out = np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    if valid is not None:
        out[~valid] = 1.0
    return out


def class_rgb(mask: np.ndarray) -> np.ndarray:
    """Crop (green) / non-crop (tan) / nodata (white) colours for a label or prediction array."""
    out = np.ones((*mask.shape, 3), dtype=np.float32)
    out[mask == CROP] = (0.18, 0.55, 0.20)
    out[mask == NONCROP] = (0.87, 0.80, 0.62)
    return out


def disagreement_rgb(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Agreement grey, missed crop (truth crop, predicted non-crop) red, extra crop (the reverse) blue."""
    out = np.ones((*pred.shape, 3), dtype=np.float32)
    both = (pred != NODATA) & (truth != NODATA)
    out[both & (pred == truth)] = (0.85, 0.85, 0.85)
    out[both & (truth == CROP) & (pred == NONCROP)] = (0.84, 0.15, 0.16)
    out[both & (truth == NONCROP) & (pred == CROP)] = (0.12, 0.47, 0.71)
    return out


def comparison_figure(
    out: str | Path,
    reflectance: np.ndarray,
    valid: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    title: str = "",
) -> Path:
    """Write a 4-panel PNG: true colour, label truth, prediction, disagreement.

    Args:
        out: PNG path.
        reflectance: float (4, rows, cols) blue, green, red, nir.
        valid: boolean (rows, cols) valid image pixels.
        truth: uint8 labels (1, 0, 255).
        pred: uint8 prediction (1, 0, 255).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = [
        ("True colour (R, G, B)", stretch(reflectance[[2, 1, 0]], valid)),
        ("Label truth", class_rgb(truth)),
        ("Prediction", class_rgb(pred)),
        ("Disagreement", disagreement_rgb(pred, truth)),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 5.2), constrained_layout=True)
    for ax, (name, img) in zip(axes, panels, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    axes[1].legend(
        handles=[Patch(color=(0.18, 0.55, 0.20), label="crop"), Patch(color=(0.87, 0.80, 0.62), label="non-crop")],
        loc="lower left", fontsize=8,
    )
    axes[3].legend(
        handles=[
            Patch(color=(0.84, 0.15, 0.16), label="missed crop"),
            Patch(color=(0.12, 0.47, 0.71), label="extra crop"),
        ],
        loc="lower left", fontsize=8,
    )
    if title:
        fig.suptitle(title)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out
