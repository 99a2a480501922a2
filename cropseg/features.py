"""Per-pixel features from reflectance.

Pure functions on arrays. A :class:`FeatureSpec` names the features; :func:`compute_features`
turns reflectance (bands, rows, cols) into features (n_features, rows, cols). Features that look
at neighbours declare a ``halo`` in pixels: tiled callers read each tile with that many extra
pixels on every side and crop them off afterwards, so tiled results equal whole-image results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cropseg.errors import InvalidRasterError

#: PlanetScope 4-band analytic band order.
PLANETSCOPE_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a model uses.

    Attributes:
        bands: names of the image bands in file order.
        reflectance: include the raw reflectance bands (the reference KNN uses only these).
    """

    bands: tuple[str, ...] = PLANETSCOPE_BANDS
    reflectance: bool = True

    @property
    def halo(self) -> int:
        """Pixels of context needed on each side of a tile."""
        return 0

    @property
    def names(self) -> list[str]:
        """Feature names, in output order."""
        return list(self.bands) if self.reflectance else []

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in the model card."""
        return {"bands": list(self.bands), "reflectance": self.reflectance}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(bands=tuple(data["bands"]), reflectance=bool(data.get("reflectance", True)))


def compute_features(reflectance: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Features float32 (n_features, rows, cols) from reflectance float32 (bands, rows, cols)."""
    if reflectance.shape[0] != len(spec.bands):
        raise ValueError(f"expected {len(spec.bands)} bands ({', '.join(spec.bands)}), got {reflectance.shape[0]}")
    parts: list[np.ndarray] = []
    if spec.reflectance:
        parts.append(reflectance.astype(np.float32, copy=False))
    if not parts:
        return np.empty((0, *reflectance.shape[1:]), np.float32)
    return np.concatenate(parts, axis=0)


def to_samples(features: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n_features, rows, cols) -> (n_pixels, n_features), keeping pixels where ``mask`` is True."""
    flat = features.reshape(features.shape[0], -1).T
    if mask is None:
        return flat
    return np.asarray(flat[mask.ravel()])


def band_names_for(count: int) -> tuple[str, ...]:
    """Band names of an image with ``count`` bands; cropseg reads 4-band (B, G, R, NIR) images."""
    if count != len(PLANETSCOPE_BANDS):
        raise InvalidRasterError(
            f"the image has {count} bands; cropseg expects 4 (blue, green, red, nir) as in PlanetScope 4-band "
            "analytic products. Select those bands first, e.g. gdal_translate -b 1 -b 2 -b 3 -b 4"
        )
    return PLANETSCOPE_BANDS
