"""Edge-aware refinement of crop probabilities with a colour-guided filter.

A per-pixel model decides every pixel on its own, so a field comes out speckled wherever its
pixels are ambiguous (stubble rows, bare headlands, patchy canopy). The guided filter of He, Sun
and Tang ("Guided Image Filtering", IEEE TPAMI 35(6), 2013) smooths the probability map *within*
regions that the image shows as homogeneous and keeps it sharp where the image has an edge, such
as a field border: in every window of radius ``r`` the output is a local linear function of the
image bands fitted to the probabilities by ridge regression (regulariser ``eps``), and each
pixel averages the fits of the windows that contain it. The pixels of one field thereby vote
together without a segmentation, and the result is a local operator: every output pixel depends
only on pixels at most :attr:`Refinement.halo` away (``2 r`` for the exact filter), so tiles read
with that halo give the same result as the whole image, which keeps streaming prediction seamless.

With ``step`` > 1 the model classifies only every ``step``-th pixel in each direction (a quarter
of them at the default 2), the local fits are made on that lattice with the radius scaled down,
and their window averages are interpolated linearly to every pixel before being applied to the
full-resolution image: the "fast guided filter" of He and Sun (arXiv:1505.00996, 2015). The image
still decides where an edge runs, to the pixel. Measured in benchmarks/refinement.py: the same
accuracy as refining every pixel (within 0.0006 weighted F1), for a quarter of the classification.

Pure functions on arrays. Window means are taken over pixels holding data only (normalised
box filters), so nodata outside the image or the AOI does not pull probabilities down.
BENCHMARKS.md has its measured effect per model ("Accuracy").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cropseg.errors import ConfigError
from cropseg.features import inverse_count, window_mean


@dataclass(frozen=True)
class Refinement:
    """Settings of the guided filter.

    Attributes:
        radius: window radius ``r`` in pixels (a window is 2 r + 1 wide).
        eps: ridge regulariser in squared reflectance: edges with a contrast well below
            ``sqrt(eps)`` are smoothed over, well above it kept.
        step: the probabilities are needed on every ``step``-th pixel of each row and column only
            (1: every pixel, the exact filter). Windows then start on multiples of ``step``.
    """

    radius: int = 8
    eps: float = 3e-5
    step: int = 4

    def __post_init__(self) -> None:
        if self.radius < 1:
            raise ConfigError(f"the refinement radius must be at least 1 pixel, got {self.radius}")
        if not self.eps > 0:
            raise ConfigError(f"the refinement eps must be positive, got {self.eps}")
        if not 1 <= self.step <= self.radius:
            raise ConfigError(f"the refinement step must be between 1 and the radius ({self.radius} px), "
                              f"got {self.step}")

    @property
    def lattice_radius(self) -> int:
        """The window radius on the lattice of every ``step``-th pixel."""
        return max(1, round(self.radius / self.step))

    @property
    def halo(self) -> int:
        """Pixels of context an output pixel depends on, on each side (a multiple of ``step``).

        On the lattice, the fits reach ``r`` lattice pixels and their averages ``r`` more; between
        lattice pixels, the interpolation reaches the next one.
        """
        return self.step * 2 * self.lattice_radius + (self.step if self.step > 1 else 0)


def upsample(lattice: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """Linear interpolation of values on every ``step``-th pixel (the first one included) to every pixel.

    ``lattice`` (ceil(rows / step), ceil(cols / step)) -> float32 ``shape`` (rows, cols). Pixels beyond
    the last lattice pixel take its value. Each output pixel's value depends on its position modulo
    ``step`` only, so windows starting on multiples of ``step`` give the same numbers as the whole image.
    """
    if step == 1:
        return lattice.astype(np.float32, copy=False)
    padded = np.pad(lattice.astype(np.float32, copy=False), ((0, 1), (0, 1)), mode="edge")
    m, n = lattice.shape
    tall = np.empty((m * step, n + 1), np.float32)
    wide = np.empty((m * step, n * step), np.float32)
    for k in range(step):
        f = np.float32(k / step)
        np.add(padded[:-1] * (1 - f), padded[1:] * f, out=tall[k::step])
    for k in range(step):
        f = np.float32(k / step)
        np.add(tall[:, :-1] * (1 - f), tall[:, 1:] * f, out=wide[:, k::step])
    return wide[: shape[0], : shape[1]]


def guided_filter(
    guide: np.ndarray, values: np.ndarray, data: np.ndarray, refinement: Refinement | None = None
) -> np.ndarray:
    """Refine ``values`` with a two-band guide (2, rows, cols), e.g. red and NIR reflectance.

    Two bands keep the per-window ridge regression a closed-form 2 x 2 solve; red and NIR carry
    nearly all of what the four PlanetScope bands give the filter (measured: within 0.002 weighted F1).

    Args:
        guide: float (2, rows, cols).
        values: crop probabilities of every ``refinement.step``-th pixel of each row and column,
            (ceil(rows / step), ceil(cols / step)), e.g. ``proba[::step, ::step]``; ignored where
            ``data`` is False.
        data: boolean (rows, cols) of pixels holding data.
        refinement: radius, eps and step (default :class:`Refinement`).

    Returns:
        float32 (rows, cols): the refined probabilities of every pixel, clipped to [0, 1]; 0 where no
        data pixel lies within the radius.
    """
    ref = refinement or Refinement()
    lattice = (slice(None, None, ref.step), slice(None, None, ref.step))
    if guide.shape[0] != 2 or guide.shape[1:] != data.shape or data[lattice].shape != values.shape:
        raise ValueError(f"need a (2, rows, cols) guide, (rows, cols) data and the values on a lattice of step "
                         f"{ref.step}, {data[lattice].shape}; got {guide.shape}, {data.shape} and {values.shape}")
    size = 2 * ref.lattice_radius + 1
    on = data[lattice]
    inv = inverse_count(on, size)

    def mean(v: np.ndarray) -> np.ndarray:  # over the data pixels of each window; v is zero elsewhere
        return window_mean(v, size, inv)

    # float32 is enough: eps (>= 1e-6 in practice) dwarfs the rounding of E[x^2] - E[x]^2 at reflectance scale
    x = np.where(on, guide[0][lattice], 0).astype(np.float32)
    y = np.where(on, guide[1][lattice], 0).astype(np.float32)
    p = np.where(on, np.nan_to_num(values), 0).astype(np.float32)
    mx, my, mp = mean(x), mean(y), mean(p)
    cxp = mean(x * p) - mx * mp
    cyp = mean(y * p) - my * mp
    sxx = mean(x * x) - mx * mx + np.float32(ref.eps)
    syy = mean(y * y) - my * my + np.float32(ref.eps)
    sxy = mean(x * y) - mx * my
    det = sxx * syy - sxy * sxy
    ax = (syy * cxp - sxy * cyp) / det
    ay = (sxx * cyp - sxy * cxp) / det
    b = mp - ax * mx - ay * my
    # each pixel averages the fits of the windows centred on data pixels (interpolated between lattice pixels)
    mean_ax, mean_ay, mean_b = (upsample(mean(np.where(on, v, 0)), data.shape, ref.step) for v in (ax, ay, b))
    out = mean_ax * np.where(data, guide[0], 0) + mean_ay * np.where(data, guide[1], 0) + mean_b
    return np.asarray(np.clip(out, 0.0, 1.0, out=out), dtype=np.float32)
