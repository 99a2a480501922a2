"""Models and model directories.

Model kinds (``--model``): ``knn`` (the reference: KNN on the 4 reflectances), ``rf`` (random
forest), ``lgbm`` (LightGBM) on per-pixel features, and ``unet`` (a compact U-Net on feature
windows; needs ``cropseg[cnn]``). The interfaces they share are in :mod:`cropseg.models.base`.

A model directory holds ``model.json`` (the model card: kind, features, hyper-parameters,
cross-validation scores, threshold, training data, library versions, and the sha256 of the
weights) and the weights in a safe format: skops with an allow-list of types (knn, rf),
LightGBM's own text format (lgbm), safetensors (unet). :func:`load_model` refuses a directory
that is not a cropseg model, whose weights do not match the card's digest, or whose weights hold
unexpected types; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cropseg.errors import InputFileNotFoundError, ModelError, OutputError
from cropseg.features import FeatureSpec
from cropseg.manifest import file_digest, now_iso, software_versions
from cropseg.models.base import ImageModel, PixelModel
from cropseg.models.cnn import UNetModel
from cropseg.models.forest import ForestModel
from cropseg.models.lgbm import LGBMModel
from cropseg.models.pixel import KNNModel
from cropseg.raster_io import atomic_path
from cropseg.refine import Refinement

CARD_NAME = "model.json"
CARD_FORMAT = "cropseg-model"
CARD_VERSION = 1

AnyModel = KNNModel | ForestModel | LGBMModel | UNetModel
MODEL_KINDS: dict[str, type[AnyModel]] = {
    KNNModel.kind: KNNModel,
    ForestModel.kind: ForestModel,
    LGBMModel.kind: LGBMModel,
    UNetModel.kind: UNetModel,
}
#: Libraries whose version goes into the card, per model kind.
_LIBRARIES: dict[str, tuple[str, ...]] = {
    "knn": ("skops",),
    "rf": ("skops",),
    "lgbm": ("lightgbm",),
    "unet": ("torch", "safetensors"),
}


@dataclass
class TrainedModel:
    """A fitted model with what is needed to apply it: features, threshold and its card."""

    model: AnyModel
    features: FeatureSpec
    threshold: float = 0.5
    card: dict[str, Any] = field(default_factory=dict)
    #: edge-aware refinement of the probabilities at prediction time (None: the model's own)
    refine: Refinement | None = None

    @property
    def is_image_model(self) -> bool:
        """Whether the model classifies whole windows (else single pixels)."""
        return self.model.input == "image"

    @property
    def halo(self) -> int:
        """Reflectance pixels of context needed around a window: the features', the network's, the refinement's."""
        extra = self.model.halo if isinstance(self.model, UNetModel) else 0
        return self.features.halo + extra + (self.refine.halo if self.refine else 0)

    @property
    def stride(self) -> int:
        """Window offsets must be multiples of this: a U-Net's down-sampling, the refinement's lattice step."""
        net = self.model.stride if isinstance(self.model, UNetModel) else 1
        return math.lcm(net, self.refine.step if self.refine else 1)

    @property
    def sample_dtype(self) -> Any:
        """The dtype of feature rows the model reads without a copy (float64 for compiled trees)."""
        return getattr(self.model, "sample_dtype", np.float32)

    @property
    def row_block(self) -> int | None:
        """Rows to classify per call; None: a whole window at once (scikit-learn splits and parallelises itself)."""
        return getattr(self.model, "row_block", None)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Crop probability for (n_samples, n_features) rows (per-pixel models only)."""
        if isinstance(self.model, UNetModel):
            raise ModelError("a U-Net classifies windows, not single pixels; use cropseg.predict.predict_window")
        return self.model.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 crop / 0 non-crop (uint8) for (n_samples, n_features) rows."""
        return (self.predict_proba(X) >= self.threshold).astype(np.uint8)


def new_model(kind: str, **kwargs: Any) -> AnyModel:
    """An unfitted model of a registered kind."""
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        raise ModelError(f"unknown model {kind!r}; choose one of: {', '.join(MODEL_KINDS)}") from None
    return cls(**kwargs)


def save_model(trained: TrainedModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a model directory atomically (replacing an existing cropseg model directory)."""
    folder = Path(folder)
    if folder.exists() and not (folder / CARD_NAME).is_file() and any(folder.iterdir()):
        raise OutputError(f"{folder} exists and is not a cropseg model directory; choose another --out")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        weights = trained.model.save(tmp)
        card = {
            "format": CARD_FORMAT,
            "format_version": CARD_VERSION,
            "created": now_iso(),
            "model": trained.model.kind,
            "params": trained.model.params,
            "threshold": trained.threshold,
            "features": {**trained.features.to_dict(), "names": trained.features.names},
            **(extra or {}),
            "software": software_versions(_LIBRARIES.get(trained.model.kind, ())),
            "weights": {"file": weights.name, "sha256": file_digest(weights)},
        }
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2, default=str) + "\n")
        trained.card = card
        if folder.exists():
            shutil.rmtree(folder)
    return folder


def read_card(folder: str | Path) -> dict[str, Any]:
    """Read and check a model card."""
    folder = Path(folder)
    if not folder.exists():
        raise InputFileNotFoundError(f"model directory {folder} does not exist; train one with `cropseg train`")
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelError(f"{folder} is not a cropseg model directory (no {CARD_NAME}); train one with `cropseg train`")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{card_path} is not valid JSON ({exc}); retrain the model") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelError(f"{card_path} is not a cropseg model card; train a model with `cropseg train`")
    if card.get("format_version") != CARD_VERSION:
        raise ModelError(
            f"{card_path} has model format version {card.get('format_version')}; this cropseg reads {CARD_VERSION}"
        )
    return card


def load_model(folder: str | Path) -> TrainedModel:
    """Load a model directory, verifying the weights' digest against the card."""
    folder = Path(folder)
    card = read_card(folder)
    kind = card.get("model")
    if kind not in MODEL_KINDS:
        raise ModelError(f"{folder}: unknown model kind {kind!r}")
    weights = card.get("weights", {})
    path = folder / str(weights.get("file", ""))
    if not path.is_file():
        raise ModelError(f"{folder}: weights file {weights.get('file')!r} is missing; retrain the model")
    if file_digest(path) != weights.get("sha256"):
        raise ModelError(
            f"{path} does not match the sha256 in {folder / CARD_NAME}: the model was modified or corrupted; "
            "refusing to load it. Retrain or restore the model"
        )
    model = MODEL_KINDS[kind].load(folder, card.get("params", {}))
    try:
        features = FeatureSpec.from_dict(card["features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder / CARD_NAME}: bad feature description ({exc}); retrain the model") from exc
    if isinstance(model, LGBMModel) and model.n_features != len(features.names):
        raise ModelError(
            f"{path} expects {model.n_features} features but the card lists {len(features.names)}; retrain the model"
        )
    return TrainedModel(model=model, features=features, threshold=float(card.get("threshold", 0.5)), card=card)


__all__ = [
    "CARD_NAME",
    "MODEL_KINDS",
    "ForestModel",
    "ImageModel",
    "KNNModel",
    "LGBMModel",
    "PixelModel",
    "TrainedModel",
    "UNetModel",
    "load_model",
    "new_model",
    "read_card",
    "save_model",
]
