"""What every cropseg model shares: the interfaces, RGD re-weighting, thresholds and metrics.

Two kinds of model sit behind one model directory format:

* :class:`PixelModel` classifies feature vectors one pixel at a time (KNN, random forest,
  LightGBM). Training hands it a sample of labelled pixels with the spatial block of each.
* :class:`ImageModel` classifies whole feature windows (the U-Net). Training hands it the
  feature image, the label raster and a raster of spatial block ids.

Both report cross-validation on spatial blocks, with out-of-fold crop probabilities from which
the training code picks the decision threshold (never on a test area).

RGD (Kumar et al., "Stochastic Re-weighted Gradient Descent via Distributionally Robust
Optimization"): within a batch, each sample's loss gradient is multiplied by
``exp(min(loss, T) / T)``, normalised to mean 1 (:func:`rgd_weights`). Hard samples weigh up to
``e`` times an easy one; the clip ``T`` bounds how much mislabelled samples can dominate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

Reweight = Literal["none", "rgd"]
ThresholdMetric = Literal["f1_macro", "f1_weighted", "none"]
#: Candidate decision thresholds on the crop probability.
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)


@runtime_checkable
class Model(Protocol):
    """What the model directory code needs of any model."""

    kind: ClassVar[str]
    input: ClassVar[Literal["pixels", "image"]]
    weights_file: ClassVar[str]

    @property
    def params(self) -> dict[str, Any]:
        """Hyper-parameters (chosen ones after fitting); stored in the model card."""
        ...

    def save(self, folder: Path) -> Path:
        """Write the weights into ``folder``; return the file written."""
        ...


@runtime_checkable
class PixelModel(Model, Protocol):
    """A classifier of per-pixel feature vectors."""

    def fit(
        self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, reweight: Reweight = "none", rgd_clip: float = 1.0
    ) -> dict[str, Any]:
        """Tune by blocked CV, refit on all samples; return the CV report.

        The report holds ``table`` (one row per candidate), ``chosen`` (the parameters fitted),
        ``method``, and the out-of-fold crop probabilities ``oof_proba`` (blocked folds) and
        ``random_oof_proba`` (random pixel folds) of the chosen parameters, as float32 (n,) arrays.
        """
        ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Crop probability (n,) float32 of (n, n_features) rows."""
        ...


@runtime_checkable
class ImageModel(Model, Protocol):
    """A classifier of feature windows (needs neighbours, sees the whole window at once)."""

    @property
    def halo(self) -> int:
        """Context pixels wanted on each side of a window (tiles overlap by this much)."""
        ...

    @property
    def stride(self) -> int:
        """Window offsets should be multiples of this (the network's total down-sampling)."""
        ...

    def predict_proba_image(self, features: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Crop probability float32 (rows, cols) of a feature window (n_features, rows, cols)."""
        ...


def rgd_weights(losses: np.ndarray, clip: float) -> np.ndarray:
    """RGD sample weights ``exp(min(loss, clip) / clip)``, normalised to mean 1.

    Args:
        losses: per-sample losses (n,), non-negative.
        clip: the clip ``T`` > 0 (also the temperature).
    """
    if clip <= 0:
        raise ValueError(f"the RGD clip must be positive, got {clip}")
    w = np.exp(np.minimum(losses, clip) / clip)
    return np.asarray(w / w.mean(), dtype=np.float64)


def logistic_loss(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-sample binary cross-entropy of labels (0/1) given crop probabilities."""
    p = np.clip(proba.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.asarray(-(y * np.log(p) + (1 - y) * np.log1p(-p)))


def f1_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Crop F1, non-crop F1, their support-weighted and plain means, and accuracy."""
    y = y.astype(bool)
    pred = pred.astype(bool)
    tp = float(np.sum(y & pred))
    fp = float(np.sum(~y & pred))
    fn = float(np.sum(y & ~pred))
    tn = float(np.sum(~y & ~pred))
    return _f1_from_counts(tp, fp, fn, tn)


def _f1_from_counts(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    crop = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    non = 2 * tn / (2 * tn + fn + fp) if tn + fn + fp else 0.0
    n_crop, n_non = tp + fn, tn + fp
    total = n_crop + n_non
    return {
        "f1_crop": crop,
        "f1_noncrop": non,
        "f1_weighted": (crop * n_crop + non * n_non) / total if total else 0.0,
        "f1_macro": (crop + non) / 2,
        "accuracy": (tp + tn) / total if total else 0.0,
    }


def threshold_table(y: np.ndarray, proba: np.ndarray) -> list[dict[str, float]]:
    """F1 scores at each of :data:`THRESHOLDS` (vectorised over thresholds)."""
    y = y.astype(bool)
    order = np.argsort(proba, kind="stable")
    p_sorted = proba[order]
    y_sorted = y[order]
    # pixels with proba >= t are predicted crop: counts from the sorted tail
    pos_tail = np.concatenate([np.cumsum(y_sorted[::-1])[::-1], [0]])
    neg_tail = np.concatenate([np.cumsum(~y_sorted[::-1])[::-1], [0]])
    n_pos, n_neg = float(y.sum()), float((~y).sum())
    rows = []
    for t in THRESHOLDS:
        i = int(np.searchsorted(p_sorted, t, side="left"))
        tp, fp = float(pos_tail[i]), float(neg_tail[i])
        rows.append({"threshold": float(t), **_f1_from_counts(tp, fp, n_pos - tp, n_neg - fp)})
    return rows


def choose_threshold(y: np.ndarray, proba: np.ndarray, metric: ThresholdMetric) -> float:
    """The threshold maximising ``metric`` on (out-of-fold) predictions; 0.5 for ``none``.

    Ties go to the threshold nearest 0.5.
    """
    if metric == "none":
        return 0.5
    table = threshold_table(y, proba)
    best = max(table, key=lambda r: (round(r[metric], 6), -abs(r["threshold"] - 0.5)))
    return float(best["threshold"])
