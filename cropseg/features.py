"""Per-pixel features from reflectance.

Pure functions on arrays. A :class:`FeatureSpec` names the features; :func:`compute_features`
turns reflectance (bands, rows, cols) into features (n_features, rows, cols). There are three
kinds, in this output order:

* the reflectance bands themselves (the reference KNN uses only these);
* spectral indices (:data:`INDICES`: NDVI, NDWI, EVI2, SAVI, GNDVI, brightness), computed per pixel;
* local context: the mean and standard deviation of some of the above in square windows of a few
  sizes (``scales``). The statistics use valid pixels only (normalised convolution), so nodata
  outside the image, outside the AOI or under a UDM2 mask does not bleed into the context.
* row texture (``texture``: periods in pixels): how strongly an image (``texture_base``: the
  brightness, i.e. the mean of the bands, or red + NIR; local mean removed) oscillates with that
  period in its strongest direction, and how much stronger that is than the mean over all directions
  (Gabor filters in ``texture_orientations`` directions, 12 in the preset: every 15 degrees; energy
  averaged over each of ``texture_windows``, 15 px by default, at every ``texture_stride``-th pixel of
  a window's rows and columns). Harvested grain keeps its windrows and fallow its tillage lines while
  idle land and dry grass have none: in one late-summer image, this is what separates them
  (BENCHMARKS.md). Averaged over a field-sized window (63 px), faint rows add up and a field's bare
  headland sees the rows beside it. Fields lie at any angle: with four directions 45 degrees apart,
  rows half-way between two of them keep about a fiftieth of the energy of rows along one (12
  directions: half or more at every angle), and a model trained where fields run north-south missed
  diagonal ones. With a stride of 4 (the ``texture`` preset), prediction, which classifies every
  fourth pixel of each row and column (a multiple of the stride), runs the Gabor filters at those
  pixels only.

Features that look at neighbours declare a ``halo`` in pixels (half the largest window): tiled
callers read each tile with that many extra pixels on every side (pixels beyond the image read
as nodata) and crop them off afterwards. Because nodata never enters a statistic, tiled results
equal whole-image results (up to the last bit of float32 rounding of the window sums).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import cv2
import numpy as np

from cropseg.errors import ConfigError, InvalidRasterError

#: PlanetScope 4-band analytic band order.
PLANETSCOPE_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")

_EPS = np.float32(1e-6)
Bands = dict[str, np.ndarray]


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), 0 where both are 0."""
    num = a - b
    den = a + b
    return np.asarray(np.divide(num, den, out=np.zeros_like(num), where=np.abs(den) > _EPS))


def _ndvi(b: Bands) -> np.ndarray:
    return _ratio(b["nir"], b["red"])


def _ndwi(b: Bands) -> np.ndarray:
    return _ratio(b["green"], b["nir"])


def _gndvi(b: Bands) -> np.ndarray:
    return _ratio(b["nir"], b["green"])


def _evi2(b: Bands) -> np.ndarray:
    return np.asarray(2.5 * (b["nir"] - b["red"]) / (b["nir"] + 2.4 * b["red"] + 1.0))


def _savi(b: Bands) -> np.ndarray:
    return np.asarray(1.5 * (b["nir"] - b["red"]) / (b["nir"] + b["red"] + 0.5))


def _brightness(b: Bands) -> np.ndarray:
    return np.asarray(sum(b.values()) / len(b))


@dataclass(frozen=True)
class Index:
    """A spectral index: the bands it needs and how to compute it from a name -> band dict."""

    bands: tuple[str, ...]
    compute: Callable[[Bands], np.ndarray]
    doc: str


#: Spectral indices cropseg knows (band names as in :data:`PLANETSCOPE_BANDS`).
INDICES: dict[str, Index] = {
    "ndvi": Index(("red", "nir"), _ndvi, "(nir - red) / (nir + red)"),
    "ndwi": Index(("green", "nir"), _ndwi, "(green - nir) / (green + nir), McFeeters 1996"),
    "gndvi": Index(("green", "nir"), _gndvi, "(nir - green) / (nir + green)"),
    "evi2": Index(("red", "nir"), _evi2, "2.5 (nir - red) / (nir + 2.4 red + 1), Jiang et al. 2008"),
    "savi": Index(("red", "nir"), _savi, "1.5 (nir - red) / (nir + red + 0.5), Huete 1988"),
    "brightness": Index((), _brightness, "mean of all bands"),
}
#: Neighbourhood statistics cropseg knows.
STATS: tuple[str, ...] = ("mean", "std")
_EVERYWHERE = (slice(None), slice(None))


#: Row-texture periods (px) of the ``texture`` preset: 4 px, windrows of about 12 m at 3 m pixels, and 2.5 px,
#: orchard and vine rows and tillage lines of about 7.5 m.
TEXTURE_PERIODS: tuple[float, ...] = (2.5, 4.0)
#: Windows (px) over which the ``texture`` preset averages the Gabor energy: 15 px, and 63 px (about a field).
TEXTURE_WINDOWS: tuple[int, ...] = (15, 63)
#: The image the Gabor filters of the row texture see: ``red+nir`` (the sum of the two bands; model cards written
#: before ``texture_base`` existed) or ``brightness`` (the mean of all bands: the ``texture`` preset).
TEXTURE_BASES: tuple[str, ...] = ("red+nir", "brightness")
_HIGHPASS = 9  # px window of the local mean removed before the Gabor filters
_TEXTURE_WINDOW = 15  # default px window over which the Gabor energy is averaged


def _gabor_radius(period: float) -> int:
    return math.ceil(3 * 0.8 * period)


def _texture_halo(period: float, window: int = _TEXTURE_WINDOW) -> int:
    return _HIGHPASS // 2 + _gabor_radius(period) + window // 2


_Kernels = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _gabor_kernels(period: float, orientations: int = 4) -> tuple[np.ndarray, list[_Kernels]]:
    """1-D factors of the Gabor filters of this period (Gaussian sigma 0.8 period), see :func:`_gabor_energies`.

    Returns the Gaussian and, for each direction k * 180 / ``orientations`` degrees from 0 up to and
    including 90, the Gaussian times the cosine and sine of the direction's frequency along the rows
    (horizontal) and along the columns (vertical): (cos_h, sin_h, cos_v, sin_v).
    """
    sigma = 0.8 * period
    r = _gabor_radius(period)
    t = np.arange(-r, r + 1, dtype=np.float64)
    env = np.exp(-(t**2) / (2 * sigma**2))
    w = 2 * np.pi / period
    out: list[_Kernels] = []
    for k in range(orientations // 2 + 1):
        angle = math.pi * k / orientations
        h, v = w * math.cos(angle), w * math.sin(angle)
        out.append((env * np.cos(h * t), env * np.sin(h * t), env * np.cos(v * t), env * np.sin(v * t)))
    return env, out


def _energy(re: np.ndarray, im: np.ndarray) -> np.ndarray:
    """re^2 + im^2 in re's memory (fresh pages are slow)."""
    np.square(re, out=re)
    re += np.square(im, out=im)
    return re


def _oriented_energies(
    period: float, orientations: int, down: Callable[[np.ndarray], np.ndarray],
    across: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> list[np.ndarray]:
    """The energies of :func:`_gabor_energies`, given the 1-D passes along the columns (``down``) and rows (``across``).

    ``across(y, kernel)`` filters ``y`` (the output of a ``down`` pass) along the rows.
    """
    env, kernels = _gabor_kernels(period, orientations)
    half = orientations // 2
    out: list[np.ndarray] = [np.empty(0)] * orientations
    for k, (cos_h, sin_h, cos_v, sin_v) in enumerate(kernels):
        if k == 0:  # oscillation along the rows only
            g = down(env)
            out[0] = _energy(across(g, cos_h), across(g, sin_h))
        elif k == half:  # oscillation along the columns only
            out[k] = _energy(across(down(cos_v), env), across(down(sin_v), env))
        else:  # (cos_h + i sin_h)(cos_v + i sin_v); 180 - angle negates the horizontal frequency
            dc, ds = down(cos_v), down(sin_v)
            cc, ss = across(dc, cos_h), across(ds, sin_h)
            cs, sc = across(ds, cos_h), across(dc, sin_h)
            out[k] = _energy(cc - ss, cs + sc)
            cc += ss
            cs -= sc
            out[orientations - k] = _energy(cc, cs)
    return out


def _gabor_energies(x: np.ndarray, period: float, orientations: int = 4) -> list[np.ndarray]:
    """|x * g|^2 for the Gabor filters g of this period in ``orientations`` directions (k * 180 / orientations degrees).

    The Gaussian is sigma 0.8 period. Each filter is the product of two 1-D complex filters (a
    Gaussian times a complex exponential along each axis), so it runs as 1-D passes along the columns
    and then the rows, and filters that share a pass compute it once: the real and imaginary parts of
    the 0 degree filter share their Gaussian pass, and the filters at an angle and at 180 degrees
    minus it share all of theirs (they differ only in the sign of the horizontal frequency): 13 passes
    for 4 directions, 37 for 12. Their DC response (exp(-2 (0.8 pi)^2), about 3e-6) is left in: the
    input has its local mean removed.
    """
    return _oriented_energies(
        period, orientations, lambda kernel: correlate_1d(x, kernel, along_rows=False), correlate_1d
    )


def _lattice_gabor_energies(
    x: np.ndarray, period: float, rows: slice, cols: slice, orientations: int = 4
) -> list[np.ndarray]:
    """:func:`_gabor_energies` at the pixels of ``rows`` x ``cols`` only (explicit starts, steps > 1).

    The passes along the columns come first and are computed at the rows of ``rows`` only
    (:func:`correlate_1d_at`); the passes along the rows then run over those rows and are kept at the
    columns of ``cols``. The filters are separable, so the order of the passes does not change the
    values (beyond rounding). (Computing the passes along the rows at the kept columns only, in the
    same polyphase form on the transposed array, was measured no faster at a step of 4.)
    """

    def down(kernel: np.ndarray) -> np.ndarray:
        return correlate_1d_at(x, kernel, rows)

    def across(y: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(correlate_1d(y, kernel)[:, cols])

    return _oriented_energies(period, orientations, down, across)


def row_texture(
    red_nir: np.ndarray, mask: np.ndarray, period: float, inner: tuple[slice, slice] = _EVERYWHERE,
    windows: tuple[int, ...] = (_TEXTURE_WINDOW,), *, full: bool = False, stride: int = 1, orientations: int = 4,
) -> list[np.ndarray]:
    """Row-texture energy and anisotropy of the image ``red_nir`` at ``period`` px.

    ``red_nir`` is what the filters see: red + NIR reflectance, or the brightness (:data:`TEXTURE_BASES`).

    Returns, for each of ``windows`` (px, over which the energies are averaged), the log of the strongest
    direction's mean energy and strongest / mean over the directions, float32 on ``inner``. Pixels outside
    ``mask`` count as zero (as does the outside of the array). ``full`` says that every pixel within reach
    of ``inner`` is valid, so that no window needs normalising (the same values, computed faster). With
    ``stride`` > 1 the energy is averaged over every ``stride``-th pixel of each row and column of a window
    (those in step with its centre, see :func:`box_means`): where ``inner`` keeps every ``stride``-th pixel
    (or a multiple) the energies are then needed, and computed, at those pixels only. ``orientations``: how
    many directions, 180 / orientations degrees apart, the Gabor filters take.
    """
    return _row_textures(red_nir, mask, (period,), inner, windows, full, stride, orientations)


def _texture_lattice(
    inner: tuple[slice, slice], shape: tuple[int, ...], periods: tuple[float, ...], windows: tuple[int, ...],
    stride: int,
) -> tuple[slice, slice, tuple[slice, slice]] | None:
    """Where strided windows let the energies be computed on a lattice: (rows, cols) of ``x`` and ``inner`` on it.

    None unless ``stride`` > 1, ``inner`` keeps every ``stride``-th pixel (or a multiple) and every
    pixel the filters and windows reach lies in the array.
    """
    if stride == 1:
        return None
    lat_reach = max(windows) // 2 // stride  # lattice points a window reaches on each side
    reach = stride * lat_reach
    gabor = max(_gabor_radius(p) for p in periods)
    on_lattice: list[slice] = []
    in_lattice: list[slice] = []
    for s, length in zip(inner, shape, strict=False):
        step = s.step or 1
        if step % stride or not _within(s, length, reach + gabor):
            return None
        n = len(range(s.start, s.stop, step))
        on_lattice.append(slice(s.start - reach, s.start + step * (n - 1) + reach + 1, stride))
        every = step // stride
        in_lattice.append(slice(lat_reach, lat_reach + every * (n - 1) + 1, every))
    return on_lattice[0], on_lattice[1], (in_lattice[0], in_lattice[1])


def _row_textures(
    image: np.ndarray, mask: np.ndarray, periods: tuple[float, ...], inner: tuple[slice, slice],
    windows: tuple[int, ...], full: bool, stride: int = 1, orientations: int = 4,
) -> list[np.ndarray]:
    """:func:`row_texture` of each of ``periods`` in turn; the high-pass and the window normalisation are shared."""
    if full:
        x = image.astype(np.float32, copy=False)
        x = x - window_mean(x, _HIGHPASS, None)
    else:
        x = np.where(mask, image, 0).astype(np.float32)
        x = np.where(mask, x - window_mean(x, _HIGHPASS, inverse_count(mask, _HIGHPASS)), 0).astype(np.float32)
    lattice = _texture_lattice(inner, x.shape, periods, windows, stride)
    energies: Callable[[float], list[np.ndarray]]
    if lattice is None:
        energies = partial(_gabor_energies, x, orientations=orientations)
        valid, where, sizes, by = mask, inner, windows, stride
    else:  # energies on the lattice of the kept pixels; each strided window is a plain one there
        rows, cols, where = lattice
        energies = partial(_lattice_gabor_energies, x, rows=rows, cols=cols, orientations=orientations)
        valid, sizes, by = mask[rows, cols], tuple(2 * (w // 2 // stride) + 1 for w in windows), 1
    inverses: Sequence[np.ndarray | None] = [None] * len(windows) if full else _inverse_counts(valid, sizes, where, by)
    invalid = None if full else ~valid
    out: list[np.ndarray] = []
    for period in periods:
        raw = energies(period)
        if invalid is not None:  # the mean energy over the window's valid pixels (a response reaches masked ones)
            for e in raw:
                np.copyto(e, 0.0, where=invalid)
        by_window = zip(*(box_means(e, sizes, where, by) for e in raw), strict=True)
        for inverse, (first, *rest) in zip(inverses, by_window, strict=True):
            if inverse is not None:
                for e in (first, *rest):
                    e *= inverse
            strongest, mean = first.copy(), first
            for e in rest:
                np.maximum(strongest, e, out=strongest)
                mean += e
            mean /= len(raw)
            anisotropy = np.divide(strongest, mean, out=np.ones_like(strongest), where=mean > 1e-12)
            strongest += 1e-10
            out += [np.log(strongest, out=strongest), anisotropy]
    return out


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a model uses.

    The default is the reference's: the 4 reflectance bands, nothing else.

    Attributes:
        bands: names of the image bands in file order.
        reflectance: include the raw reflectance bands.
        indices: spectral indices to add (keys of :data:`INDICES`).
        context: bands or indices whose neighbourhood statistics are added.
        scales: odd window sizes (pixels) of the neighbourhood statistics.
        stats: which statistics (``mean``, ``std``).
        texture: periods (pixels, 2 to 16) of the row-texture features.
        texture_windows: odd window sizes (pixels) over which the row-texture energy is averaged.
        texture_stride: the energy is averaged over every ``texture_stride``-th pixel of each row and
            column of those windows (those in step with the centre pixel). 4 in the ``texture`` preset:
            prediction, which classifies every fourth pixel (``refine_step``, a multiple of 4), then
            computes the Gabor filters at a sixteenth of the pixels; 1 (every pixel) in model cards
            written before it existed.
        texture_orientations: directions of the Gabor filters, 180 / n degrees apart (an even number, 4 to
            16): 12 in the ``texture`` preset, 4 in model cards written before it existed.
        texture_base: the image the Gabor filters see (:data:`TEXTURE_BASES`): ``brightness`` in the
            ``texture`` preset, ``red+nir`` in model cards written before it existed.
    """

    bands: tuple[str, ...] = PLANETSCOPE_BANDS
    reflectance: bool = True
    indices: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    scales: tuple[int, ...] = ()
    stats: tuple[str, ...] = field(default=STATS)
    texture: tuple[float, ...] = ()
    texture_windows: tuple[int, ...] = (_TEXTURE_WINDOW,)
    texture_stride: int = 1
    texture_orientations: int = 4
    texture_base: str = "red+nir"

    def __post_init__(self) -> None:
        unknown = [i for i in self.indices if i not in INDICES]
        if unknown:
            raise ConfigError(f"unknown spectral index {', '.join(unknown)}; known: {', '.join(INDICES)}")
        for name in self.indices:
            missing = [b for b in INDICES[name].bands if b not in self.bands]
            if missing:
                raise ConfigError(f"index {name} needs band(s) {', '.join(missing)}, not among {list(self.bands)}")
        base = set(self.bands) | set(self.indices)
        bad = [c for c in self.context if c not in base]
        if bad:
            raise ConfigError(
                f"context feature(s) {', '.join(bad)} are neither bands nor selected indices ({', '.join(base)})"
            )
        if any(s < 3 or s % 2 == 0 for s in self.scales):
            raise ConfigError(f"context scales must be odd window sizes >= 3, got {list(self.scales)}")
        if bool(self.context) != bool(self.scales):
            raise ConfigError("give both context features and scales, or neither")
        if self.context and not self.stats:
            raise ConfigError("context features need at least one statistic (mean, std)")
        bad = [s for s in self.stats if s not in STATS]
        if bad:
            raise ConfigError(f"unknown statistic {', '.join(bad)}; known: {', '.join(STATS)}")
        if any(not 2.0 <= p <= 16 for p in self.texture):
            raise ConfigError(f"texture periods must be between 2 and 16 pixels, got {list(self.texture)}")
        if not self.texture_windows or any(w < 3 or w % 2 == 0 for w in self.texture_windows):
            raise ConfigError(f"texture windows must be odd window sizes >= 3, got {list(self.texture_windows)}")
        if not 1 <= self.texture_stride <= 4:
            raise ConfigError(f"the texture stride must be 1 to 4 pixels, got {self.texture_stride}")
        if self.texture_base not in TEXTURE_BASES:
            raise ConfigError(f"unknown texture base {self.texture_base!r}; choose one of: {', '.join(TEXTURE_BASES)}")
        if self.texture_orientations not in range(4, 17, 2):
            raise ConfigError(
                f"texture orientations must be an even number from 4 to 16, got {self.texture_orientations}"
            )
        if self.texture and not {"red", "nir"} <= set(self.bands):
            raise ConfigError(f"texture features need red and nir bands, not among {list(self.bands)}")

    @property
    def halo(self) -> int:
        """Pixels of context needed on each side of a tile."""
        context = max(self.scales) // 2 if self.context else 0
        texture = max((_texture_halo(p, max(self.texture_windows)) for p in self.texture), default=0)
        return max(context, texture)

    @property
    def names(self) -> list[str]:
        """Feature names, in output order."""
        out = list(self.bands) if self.reflectance else []
        out += list(self.indices)
        out += [f"{stat}{scale}_{base}" for base in self.context for scale in self.scales for stat in self.stats]
        out += [f"rows{p:g}_{what}{'' if w == _TEXTURE_WINDOW else w}" for p in self.texture
                for w in self.texture_windows for what in ("energy", "anisotropy")]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in the model card."""
        return {
            "bands": list(self.bands),
            "reflectance": self.reflectance,
            "indices": list(self.indices),
            "context": list(self.context),
            "scales": list(self.scales),
            "stats": list(self.stats),
            "texture": list(self.texture),
            "texture_windows": list(self.texture_windows),
            "texture_stride": self.texture_stride,
            "texture_orientations": self.texture_orientations,
            "texture_base": self.texture_base,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict` (keys absent in old cards take their defaults)."""
        return cls(
            bands=tuple(data["bands"]),
            reflectance=bool(data.get("reflectance", True)),
            indices=tuple(data.get("indices", ())),
            context=tuple(data.get("context", ())),
            scales=tuple(int(s) for s in data.get("scales", ())),
            stats=tuple(data.get("stats", STATS)),
            texture=tuple(float(p) for p in data.get("texture", ())),
            texture_windows=tuple(int(w) for w in data.get("texture_windows", (_TEXTURE_WINDOW,))),
            texture_stride=int(data.get("texture_stride", 1)),
            texture_orientations=int(data.get("texture_orientations", 4)),
            texture_base=str(data.get("texture_base", "red+nir")),
        )

    def with_bands(self, bands: tuple[str, ...]) -> FeatureSpec:
        """The same features for an image with these band names."""
        return replace(self, bands=bands)


#: Named feature sets (``--features NAME``); see :func:`feature_preset`.
FEATURE_PRESETS: dict[str, FeatureSpec] = {
    "reference": FeatureSpec(),
    "spectral": FeatureSpec(indices=("ndvi", "ndwi", "evi2", "brightness")),
    "context": FeatureSpec(
        indices=("ndvi", "ndwi", "evi2", "brightness"),
        context=("nir", "red", "ndvi"),
        scales=(3, 7, 15, 31),
    ),
    "texture": FeatureSpec(
        indices=("ndvi", "ndwi", "evi2", "brightness"),
        context=("nir", "red", "ndvi"),
        scales=(3, 7, 15, 31),
        texture=TEXTURE_PERIODS,
        texture_windows=TEXTURE_WINDOWS,
        texture_stride=4,
        texture_orientations=12,
        texture_base="brightness",
    ),
}


def feature_preset(name: str, bands: tuple[str, ...] = PLANETSCOPE_BANDS) -> FeatureSpec:
    """A named feature set for an image with ``bands``.

    - ``reference``: the 4 reflectance bands (the reference KNN's features);
    - ``spectral``: bands + NDVI, NDWI, EVI2, brightness;
    - ``context``: spectral + mean / std of NIR, red and NDVI in 3, 7, 15 and 31 px windows;
    - ``texture``: context + row texture at the periods of :data:`TEXTURE_PERIODS`, averaged over the windows of
      :data:`TEXTURE_WINDOWS`.
    """
    try:
        spec = FEATURE_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown feature set {name!r}; choose one of: {', '.join(FEATURE_PRESETS)}") from None
    return spec.with_bands(bands)


def data_mask(reflectance: np.ndarray) -> np.ndarray:
    """Boolean (rows, cols): pixels holding data (all bands finite, not all zero)."""
    return np.asarray(np.isfinite(reflectance).all(axis=0) & (reflectance != 0).any(axis=0))


def box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Mean of float32 ``x`` (rows, cols) over ``size`` x ``size`` windows, the outside of the array counting as 0.

    OpenCV's box filter (running sums in double precision): several times faster than scipy.ndimage's
    ``uniform_filter`` on tiles (measured in an earlier stop), the same values to float32 rounding.
    """
    return np.asarray(cv2.boxFilter(x, -1, (size, size), normalize=True, borderType=cv2.BORDER_CONSTANT))


def correlate_1d(x: np.ndarray, kernel: np.ndarray, *, along_rows: bool = True) -> np.ndarray:
    """Correlate float32 ``x`` (rows, cols) with an odd-length centred 1-D kernel along each row (or column).

    Zeros outside the array. OpenCV's ``filter2D`` with a one-row (one-column) kernel: a 2-D separable
    filter run as two such passes costs about 0.6 of ``sepFilter2D``, and passes can be shared.
    """
    k = kernel.astype(np.float32).reshape((1, -1) if along_rows else (-1, 1))
    return np.asarray(cv2.filter2D(x, -1, k, borderType=cv2.BORDER_CONSTANT))


def correlate_1d_at(x: np.ndarray, kernel: np.ndarray, rows: slice) -> np.ndarray:
    """:func:`correlate_1d` along the columns, at the rows of ``rows`` only (explicit start, stop and step).

    Computed in polyphase form: the kernel's taps at each offset modulo the step meet the rows of
    ``x`` at that offset, so each phase is one pass over 1 / step of the rows with 1 / step of the taps.
    The rows the kernel reaches above ``rows.start`` must lie in ``x`` (zeros below its last row).
    """
    step = rows.step or 1
    r = len(kernel) // 2
    if rows.start - r < 0:
        raise ValueError(f"the kernel reaches {r} rows above row {rows.start}, outside the array")
    n = len(range(rows.start, rows.stop, step))
    out: np.ndarray | None = None
    for phase in range(min(step, len(kernel))):
        taps = kernel[phase::step].astype(np.float32).reshape(-1, 1)
        part = cv2.filter2D(x[rows.start - r + phase :: step], -1, taps, anchor=(0, 0),
                            borderType=cv2.BORDER_CONSTANT)[:n]
        if out is None:
            out = np.array(part)
        else:
            out += part
    assert out is not None
    return out


def inverse_count(valid: np.ndarray, size: int) -> np.ndarray:
    """1 / (share of valid pixels in each ``size`` px window), 0 where the window holds none.

    Pixels beyond the array count as invalid. With :func:`window_mean`, it gives means over valid pixels only.
    """
    return _inverse_counts(valid, (size,))[0]


def _inverse_counts(
    valid: np.ndarray, sizes: tuple[int, ...], inner: tuple[slice, slice] = _EVERYWHERE, stride: int = 1
) -> list[np.ndarray]:
    """:func:`inverse_count` for each of ``sizes``, on ``inner`` (windows of ``stride``: :func:`box_means`)."""
    counts = box_means(valid.astype(np.float32), sizes, inner, stride)
    return [np.asarray(np.divide(1.0, c, out=np.zeros_like(c), where=c > 1e-6)) for c in counts]


def window_mean(
    x: np.ndarray, size: int, inv: np.ndarray | None, inner: tuple[slice, slice] = _EVERYWHERE
) -> np.ndarray:
    """Mean of ``x`` over the valid pixels of each ``size`` px window, on ``inner``.

    ``x`` must be zero where invalid; ``inv`` is :func:`inverse_count` of the valid pixels (on
    ``inner``), or None when every window is wholly valid.
    """
    mean = box_mean(x, size)[inner]
    if inv is not None:
        mean *= inv
    return mean


def box_means(
    x: np.ndarray, sizes: tuple[int, ...], inner: tuple[slice, slice] = _EVERYWHERE, stride: int = 1
) -> Iterator[np.ndarray]:
    """:func:`box_mean` of float32 ``x`` for each of ``sizes`` in turn, on ``inner``: arrays of fresh memory.

    Where ``inner`` keeps only every second (or more) pixel and every window lies inside ``x``, the
    sums come from one integral image (double precision) read at the kept pixels' window corners: for
    several sizes at once this is cheaper than filtering every pixel once per size, and the values
    are the same to float32 rounding. Otherwise each size is one OpenCV box filter, run when its
    mean is asked for (a caller taking one at a time holds one full-size array at a time).

    With ``stride`` > 1 a window holds every ``stride``-th pixel of each row and column only, those
    that share the centre pixel's position modulo ``stride`` and lie within ``size // 2`` of it
    (``2 (size // 2 // stride) + 1`` per side): each of the ``stride``^2 phases of ``x`` is box filtered
    on its own.
    """
    if stride > 1:
        for size in sizes:
            yield _strided_box_mean(x, size, stride)[inner]
        return
    rows, cols = inner
    reach = max(sizes) // 2
    if (rows.step or 1) == 1 or not _within(rows, x.shape[0], reach) or not _within(cols, x.shape[1], reach):
        for size in sizes:
            yield box_mean(x, size)[inner]
        return
    # the integral image of the part of x that the windows reach only: indices shift by its first row and column
    top, left = rows.start - reach, cols.start - reach
    rows, cols = _shifted(rows, -top), _shifted(cols, -left)
    integral = cv2.integral(x[top : rows.stop + top + reach, left : cols.stop + left + reach], sdepth=cv2.CV_64F)
    for size in sizes:
        r = size // 2
        below, above = integral[_shifted(rows, r + 1)], integral[_shifted(rows, -r)]
        lo, hi = _shifted(cols, -r), _shifted(cols, r + 1)
        total = below[:, hi] - below[:, lo]
        total -= above[:, hi]
        total += above[:, lo]
        total *= 1.0 / (size * size)
        yield total.astype(np.float32)


def _strided_box_mean(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Mean over the strided windows of :func:`box_means` (``stride`` > 1), at every pixel of ``x``."""
    out = np.empty_like(x)
    side = 2 * (size // 2 // stride) + 1
    for r in range(stride):
        for c in range(stride):
            out[r::stride, c::stride] = box_mean(np.ascontiguousarray(x[r::stride, c::stride]), side)
    return out


def _within(s: slice, length: int, reach: int) -> bool:
    """Whether every index of ``s`` (explicit start and stop) is at least ``reach`` from both ends of ``length``."""
    return s.start is not None and s.stop is not None and s.start >= reach and s.stop + reach <= length


def _shifted(s: slice, by: int) -> slice:
    return slice(s.start + by, s.stop + by, s.step)


def _stats_into(
    out: dict[str, np.ndarray], mean: np.ndarray, sq: np.ndarray | None, inv: np.ndarray | None
) -> None:
    """Write the window mean and/or standard deviation into the arrays of ``out`` (by statistic).

    ``mean`` and ``sq``: window means of the values and of their squares over all pixels (zero where
    invalid), scaled by ``inv`` (:func:`inverse_count`) to means over valid pixels when it is given.
    """
    if inv is not None:
        mean *= inv
    if "mean" in out:
        out["mean"][...] = mean
    if "std" in out:
        assert sq is not None
        if inv is not None:
            sq *= inv
        var = np.subtract(sq, np.square(mean, out=mean), out=out["std"])
        # float32 cancellation leaves rounding noise (~1e-7 sq) where a window is uniform: make that exactly 0
        np.putmask(var, var <= np.multiply(sq, 1e-5, out=sq), 0.0)
        np.sqrt(var, out=var)


def local_stats(
    x: np.ndarray, valid: np.ndarray, size: int, stats: tuple[str, ...] = STATS
) -> dict[str, np.ndarray]:
    """Mean and/or standard deviation of ``x`` over valid pixels in ``size`` x ``size`` windows.

    Args:
        x: float32 (rows, cols).
        valid: boolean (rows, cols); invalid pixels take no part (and the outside of the array
            counts as invalid).
        size: odd window size in pixels.
        stats: ``mean`` and/or ``std``.

    Returns:
        name -> float32 (rows, cols); 0 where the window holds no valid pixel. A standard deviation
        below 0.3 % of the window's root mean square is returned as 0 (float32 rounding).
    """
    xw = np.where(valid, x, 0).astype(np.float32)
    out = {s: np.empty(x.shape, np.float32) for s in stats}
    _stats_into(out, box_mean(xw, size), box_mean(xw * xw, size), inverse_count(valid, size))
    return out


def compute_features(
    reflectance: np.ndarray, spec: FeatureSpec, valid: np.ndarray | None = None, *, crop: int = 0, step: int = 1
) -> np.ndarray:
    """Features float32 (n_features, rows, cols) from reflectance float32 (bands, rows, cols).

    Args:
        reflectance: float32 (bands, rows, cols), bands as in ``spec.bands``.
        spec: which features.
        valid: boolean (rows, cols) of pixels that may enter neighbourhood statistics; by default
            the pixels that hold data (:func:`data_mask`).
        crop: return only the features of the pixels at least this far from the edges, i.e.
            (n_features, rows - 2 crop, cols - 2 crop): a tile read with a halo of ``crop`` gets the
            features of the tile proper, computed once (the same values as cropping afterwards).
        step: return the features of every ``step``-th pixel in each direction only, starting at the
            first pixel kept: the values of those pixels, computed faster than all of them (the window
            means read one integral image per input at the kept pixels, see :func:`box_means`, what
            follows them runs on the kept pixels, and when ``step`` is a multiple of the spec's
            ``texture_stride`` > 1 the Gabor filters run at the pixels in step with the kept ones only).
    """
    if reflectance.shape[0] != len(spec.bands):
        raise ValueError(f"expected {len(spec.bands)} bands ({', '.join(spec.bands)}), got {reflectance.shape[0]}")
    _, height, width = reflectance.shape
    if crop < 0 or 2 * crop >= min(height, width):
        raise ValueError(f"cannot crop {crop} px off each side of a {height} x {width} window")
    if step < 1:
        raise ValueError(f"the step must be a positive number of pixels, got {step}")
    refl = reflectance.astype(np.float32, copy=False)
    inner = (slice(crop, height - crop, step), slice(crop, width - crop, step))
    out = np.empty((len(spec.names), *lattice_shape((height - 2 * crop, width - 2 * crop), step)), np.float32)
    bands = {name: refl[i] for i, name in enumerate(spec.bands)}
    base: dict[str, np.ndarray] = dict(bands)
    i = 0
    if spec.reflectance:
        out[: len(spec.bands)] = refl[(slice(None), *inner)]
        i = len(spec.bands)
    kept = {name: refl[(k, *inner)] for k, name in enumerate(spec.bands)}  # the returned pixels of each band
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in spec.indices:
            # an index is needed at every pixel only for its neighbourhood statistics
            everywhere = name in spec.context
            value = INDICES[name].compute(bands if everywhere else kept).astype(np.float32, copy=False)
            value = np.nan_to_num(value, copy=False)
            if everywhere:
                base[name] = value
                value = value[inner]
            out[i] = value
            i += 1
    if spec.context or spec.texture:
        mask = data_mask(refl) if valid is None else valid & data_mask(refl)
        full = bool(mask.all())
    if spec.context:
        # windows that lie wholly inside a fully valid array need no normalisation (the count is exactly 1)
        scales = tuple(spec.scales)
        inverse = (
            [None] * len(scales) if full and crop >= max(scales) // 2 else _inverse_counts(mask, scales, inner)
        )
        for name in spec.context:
            xw = base[name] if full else np.where(mask, base[name], 0).astype(np.float32)
            means = box_means(xw, scales, inner)
            squares = box_means(xw * xw, scales, inner) if "std" in spec.stats else iter([None] * len(scales))
            for mean, sq, inv in zip(means, squares, inverse, strict=True):
                _stats_into({stat: out[i + k] for k, stat in enumerate(spec.stats)}, mean, sq, inv)
                i += len(spec.stats)
    if spec.texture:
        image = bands["red"] + bands["nir"] if spec.texture_base == "red+nir" else _brightness(bands)
        # every window of every period lies inside the fully valid array
        reach = full and crop >= _texture_halo(max(spec.texture), max(spec.texture_windows))
        planes = _row_textures(image, mask, spec.texture, inner, spec.texture_windows, reach, spec.texture_stride,
                               spec.texture_orientations)
        for plane in planes:
            out[i] = plane
            i += 1
    return out


def lattice_shape(shape: tuple[int, ...], step: int) -> tuple[int, int]:
    """(rows, cols) of every ``step``-th pixel of a (rows, cols) array, the first one included."""
    return -(-shape[0] // step), -(-shape[1] // step)


#: Pixels per block when turning feature planes into rows: a block of rows stays in the CPU cache.
ROW_BLOCK = 8192


def sample_blocks(
    features: np.ndarray, mask: np.ndarray | None = None, dtype: Any = np.float32, block: int = ROW_BLOCK
) -> Iterator[np.ndarray]:
    """The rows of :func:`to_samples`, at most ``block`` pixels at a time, in one reused buffer.

    Each yielded array is overwritten by the next. Converting a block and classifying it at once
    keeps it in the CPU cache, and no tile-sized row array is allocated (for a 512 px tile of 32
    features in float64 that would be 64 MiB of fresh pages per tile). The planes are turned into
    rows by OpenCV's blocked transpose (numpy's strided copy is about five times slower), then the
    rows of pixels outside ``mask`` are dropped (a contiguous gather, not a strided one).
    """
    flat = features.reshape(features.shape[0], -1)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    keep = None if mask is None or mask.all() else mask.ravel()
    buf = np.empty((block, flat.shape[0]), dtype)
    scratch = np.empty((block, flat.shape[0]), np.float32)
    for start in range(0, flat.shape[1], block):
        part = flat[:, start : start + block]
        if keep is not None and not keep[start : start + block].any():
            continue
        moved = scratch[: part.shape[1]]
        if cv2.transpose(part, dst=moved) is not moved:  # pragma: no cover - OpenCV reallocated: copy instead
            moved[...] = part.T
        if keep is not None:
            moved = moved[keep[start : start + block]]
        rows = buf[: len(moved)]
        rows[...] = moved
        yield rows


def to_samples(features: np.ndarray, mask: np.ndarray | None = None, dtype: Any = np.float32) -> np.ndarray:
    """(n_features, rows, cols) -> C-contiguous (n_pixels, n_features) of ``dtype``, pixels where ``mask`` is True.

    Models read one pixel's features as one row; the planes are turned into rows block by block
    (a whole-array transpose would walk memory with a stride of a full plane).
    """
    n = features[0].size if mask is None else int(np.count_nonzero(mask))
    out = np.empty((n, features.shape[0]), dtype)
    done = 0
    for rows in sample_blocks(features, mask, dtype):
        out[done : done + len(rows)] = rows
        done += len(rows)
    return out


def band_names_for(count: int) -> tuple[str, ...]:
    """Band names of an image with ``count`` bands; cropseg reads 4-band (B, G, R, NIR) images."""
    if count != len(PLANETSCOPE_BANDS):
        raise InvalidRasterError(
            f"the image has {count} bands; cropseg expects 4 (blue, green, red, nir) as in PlanetScope 4-band "
            "analytic products. Select those bands first, e.g. gdal_translate -b 1 -b 2 -b 3 -b 4"
        )
    return PLANETSCOPE_BANDS
