"""Figures: PNG panels comparing image, label truth, prediction, disagreement and change.

Colour helpers (:func:`stretch`, :func:`false_colour`, :func:`class_rgb`, :func:`disagreement_rgb`,
:func:`change_rgb`) are pure: arrays in, float RGB (rows, cols, 3) in [0, 1] out.
:func:`comparison_figure` draws the reference's four panels; :func:`panel_figure` any set of panels
(true and false colour, truth, prediction, disagreement, changed fields) for the whole area or a
window; :func:`disagreement_windows` finds the N largest disagreements and :func:`figure_set` writes
the overview plus one figure per disagreement. Rendering uses matplotlib's non-interactive Agg
backend; nothing here needs a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropseg.grid import Window
from cropseg.label import CROP, NODATA, NONCROP
from cropseg.raster_io import atomic_path

CROP_COLOUR = (0.18, 0.55, 0.20)
NONCROP_COLOUR = (0.87, 0.80, 0.62)
AGREE_COLOUR = (0.85, 0.85, 0.85)
MISSED_COLOUR = (0.84, 0.15, 0.16)
EXTRA_COLOUR = (0.12, 0.47, 0.71)
LOST_COLOUR = (0.84, 0.15, 0.16)
NEW_COLOUR = (0.12, 0.47, 0.71)
#: Values of a change raster (:func:`change_rgb`): no change, lost cropland, new cropland.
NO_CHANGE, LOST_VALUE, NEW_VALUE = 0, 1, 2


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
    out[mask == CROP] = CROP_COLOUR
    out[mask == NONCROP] = NONCROP_COLOUR
    return out


def disagreement_rgb(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Agreement grey, missed crop (truth crop, predicted non-crop) red, extra crop (the reverse) blue."""
    out = np.ones((*pred.shape, 3), dtype=np.float32)
    both = (pred != NODATA) & (truth != NODATA)
    out[both & (pred == truth)] = AGREE_COLOUR
    out[both & (truth == CROP) & (pred == NONCROP)] = MISSED_COLOUR
    out[both & (truth == NONCROP) & (pred == CROP)] = EXTRA_COLOUR
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


def false_colour(reflectance: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Colour-infrared composite (NIR, red, green as R, G, B) of (4, rows, cols) B, G, R, NIR reflectance.

    Vigorous vegetation shows bright red, bare soil and dry grass grey-brown, water dark.
    """
    return stretch(reflectance[[3, 2, 1]], valid)


def change_rgb(changes: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """Changed fields: lost cropland red, new cropland blue, over the faded label truth (or white).

    Args:
        changes: uint8 (rows, cols): :data:`NO_CHANGE`, :data:`LOST_VALUE` or :data:`NEW_VALUE`.
        truth: optional uint8 labels (1, 0, 255) drawn faded underneath.
    """
    out = np.ones((*changes.shape, 3), dtype=np.float32)
    if truth is not None:
        out = 0.45 * class_rgb(truth) + 0.55
    out[changes == LOST_VALUE] = LOST_COLOUR
    out[changes == NEW_VALUE] = NEW_COLOUR
    return np.asarray(out, dtype=np.float32)


def disagreement_windows(
    pred: np.ndarray, truth: np.ndarray, n: int = 4, size: int = 160, smooth: int = 5
) -> list[tuple[Window, int]]:
    """The ``n`` largest regions where prediction and truth disagree, as windows of about ``size`` pixels.

    The disagreement mask is median-smoothed (``smooth`` px window) so that speckle does not count,
    split into connected regions and ranked by area. Each window is centred on the point deepest
    inside its region and clipped to the grid; a region whose centre falls in a window already
    chosen is skipped.

    Returns:
        list of (window, region pixels), largest first.
    """
    from scipy import ndimage

    both = (pred != NODATA) & (truth != NODATA)
    mask = both & (pred != truth)
    if smooth > 1:
        mask = ndimage.median_filter(mask.astype(np.uint8), size=smooth, mode="constant") > 0
    regions, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    rows, cols = pred.shape
    half = size // 2
    chosen: list[tuple[Window, int]] = []
    for label in np.argsort(-sizes, kind="stable"):
        if sizes[label] == 0 or len(chosen) >= n:
            break
        sl = ndimage.find_objects((regions == label).astype(np.int32))[0]
        sub = regions[sl] == label
        depth = ndimage.distance_transform_edt(sub)
        r, c = np.unravel_index(int(np.argmax(depth)), sub.shape)
        r, c = r + sl[0].start, c + sl[1].start
        if any(w.row_off <= r < w.row_off + w.height and w.col_off <= c < w.col_off + w.width for w, _ in chosen):
            continue
        r0 = int(min(max(r - half, 0), max(rows - size, 0)))
        c0 = int(min(max(c - half, 0), max(cols - size, 0)))
        chosen.append((Window(c0, r0, min(size, cols), min(size, rows)), int(sizes[label])))
    return chosen


def panel_figure(
    out: str | Path,
    panels: list[tuple[str, np.ndarray]],
    title: str = "",
    legends: dict[str, list[tuple[tuple[float, float, float], str]]] | None = None,
    dpi: int = 90,
) -> Path:
    """Write a PNG of image panels side by side (two rows when there are more than four).

    Args:
        out: PNG path.
        panels: (panel title, float RGB (rows, cols, 3) in [0, 1]) pairs.
        title: figure title.
        legends: panel title -> [(colour, label), ...] drawn in that panel.
        dpi: resolution.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not panels:
        raise ValueError("panel_figure needs at least one panel")
    ncols = len(panels) if len(panels) <= 4 else -(-len(panels) // 2)
    nrows = -(-len(panels) // ncols)
    h, w = panels[0][1].shape[:2]
    cell = 4.6
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell * ncols, cell * nrows * h / max(w, 1) + (0.6 if title else 0.3)),
        constrained_layout=True, squeeze=False,
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (name, img) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name)
        items = (legends or {}).get(name)
        if items:
            ax.legend(handles=[Patch(color=c, label=lab) for c, lab in items], loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


LEGENDS: dict[str, list[tuple[tuple[float, float, float], str]]] = {
    "Label truth": [(CROP_COLOUR, "crop"), (NONCROP_COLOUR, "non-crop")],
    "Disagreement": [(MISSED_COLOUR, "missed crop"), (EXTRA_COLOUR, "extra crop")],
    "Changed fields": [(LOST_COLOUR, "lost cropland"), (NEW_COLOUR, "new cropland")],
}


def comparison_panels(
    pred: np.ndarray,
    reflectance: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    changes: np.ndarray | None = None,
) -> list[tuple[str, np.ndarray]]:
    """The panels that the inputs allow: true / false colour, label truth, prediction, disagreement, change.

    All arrays share one (rows, cols) shape; ``reflectance`` is float (4, rows, cols) B, G, R, NIR.
    """
    panels: list[tuple[str, np.ndarray]] = []
    if reflectance is not None:
        panels.append(("True colour (R, G, B)", stretch(reflectance[[2, 1, 0]], valid)))
        if reflectance.shape[0] >= 4:
            panels.append(("False colour (NIR, R, G)", false_colour(reflectance, valid)))
    if truth is not None:
        panels.append(("Label truth", class_rgb(truth)))
    panels.append(("Prediction", class_rgb(pred)))
    if truth is not None:
        panels.append(("Disagreement", disagreement_rgb(pred, truth)))
    if changes is not None:
        panels.append(("Changed fields", change_rgb(changes, truth)))
    return panels


def figure_set(
    out_dir: str | Path,
    pred: np.ndarray,
    reflectance: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    changes: np.ndarray | None = None,
    n: int = 4,
    size: int = 160,
    title: str = "",
) -> list[Path]:
    """Write ``overview.png`` (the whole area) and ``disagreement_1.png`` ... for the ``n`` largest disagreements.

    Returns:
        The PNG paths written, overview first.
    """
    out_dir = Path(out_dir)

    def cut(a: np.ndarray | None, win: Window) -> np.ndarray | None:
        return None if a is None else a[(..., *win.slices)]

    paths = [
        panel_figure(out_dir / "overview.png", comparison_panels(pred, reflectance, valid, truth, changes),
                     title=title or "Whole area", legends=LEGENDS)
    ]
    if truth is not None:
        for i, (win, pixels) in enumerate(disagreement_windows(pred, truth, n=n, size=size), start=1):
            sub_pred = cut(pred, win)
            assert sub_pred is not None
            panels = comparison_panels(sub_pred, cut(reflectance, win), cut(valid, win), cut(truth, win),
                                       cut(changes, win))
            caption = (f"Disagreement {i}: {pixels} px region, window rows {win.row_off}-{win.row_off + win.height}, "
                       f"cols {win.col_off}-{win.col_off + win.width}")
            paths.append(panel_figure(out_dir / f"disagreement_{i}.png", panels, title=caption, legends=LEGENDS))
    return paths
