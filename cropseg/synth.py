"""Synthetic PlanetScope-like scenes rendered from label polygons.

:func:`synthesize` paints a 4-band (Blue, Green, Red, NIR) PlanetScope ``analytic`` scene (TOA radiance
DNs plus the reflectance coefficients that turn them into TOA reflectance), a matching UDM2 and the
label rasters from crop polygons such as the DWR 2015 ground truth, so that the pipeline can be shown,
tested and benchmarked without Planet imagery. :func:`procedural_layout` makes a plausible
Central-Valley field layout when no polygons are at hand; :func:`write_synth` and :func:`run_synth`
put a scene on disk the way the rest of cropseg reads it.

Scene model (late August, California Central Valley, like the reference scenes of 2016-08-31):

* **Units.** Every crop polygon is one unit. Everything else in the AOI (the DWR survey leaves it
  unmapped) is split into non-crop units: thin gaps between fields (narrower than about 6 px) become
  roads, dirt tracks or weedy ditches; a meandering river corridor (water and riparian forest) and a
  small town are drawn from a seeded plan of the AOI; the rest is cut into field-shaped pieces (gaps
  enclosed by roads) or, for large open areas, Voronoi cells of about 250 m, each given one non-crop
  cover. Non-crop polygons in the truth with a DWR code (``I``, ``S``, ``U*``, ``NR``, ``NW``, ``NV``, ...)
  are honoured.
* **Covers.** A crop unit draws its cover from its CLASS1 (seeded, with late-August proportions;
  polygons without a known DWR code draw a class first):

  ====== ==============================================================================
  class  covers (share)
  ====== ==============================================================================
  G      harvested stubble (faint windrows) .58, hay re-growth .18, fallow .12, green .12
  R      green crop .85, senescent .15
  F      green crop .45, senescent / drying (corn) .30, row crop .12, fallow .08, stubble .05
  P      irrigated pasture .55, cut hay re-growth .25, dry pasture .20
  T      row crop (rows 1.7-2.5 px) .60, fallow .28, green crop .12
  D / C  orchard / citrus (crowns on a 2-3 px grid) .94, fallow .06
  V      vineyard (rows, period 2.5-3.7 px) .95, fallow .05
  ====== ==============================================================================

  Fallow is bare soil with faint tillage lines. Row crops, orchards and vineyards have a 1-3 px
  headland of bare background along their edges, other crops up to 1.3 px. Lost cropland is idle
  .45, dry grass .35, weedy idle .20. Open non-crop pieces: dry annual grass .42, idle bare .19,
  weedy idle .12, oak savanna .10, farmstead .06, riparian trees .06, wetland .03, water .02;
  enclosed pieces under 1.5 ha are mostly farmsteads (.35); road strips are paved or gravel roads
  .45, dirt tracks .35, weedy ditches .20.
* **Spectra.** Each unit mixes a primary material A with a background material B at a fraction F
  (canopy cover). Each unit draws its own A and B spectra between two end points of its material
  (field-to-field variation) and its own F. Rows and crowns are cosine patterns along the field's
  long axis (contrast reduced by pixel averaging); riparian and oak crowns come from thresholded
  small-scale noise; towns and farmsteads are street grids and lots with one building each, with
  roofs, asphalt, trees, lawns and gravel. Within a unit, F varies with medium-scale patches (30 m),
  brightness with low-frequency noise (120 m), and every pixel gets its own brightness (2-7 %) and
  band noise (1.5 %). The sensor is a Gaussian PSF (sigma 0.6 px) and shot plus read noise
  (sigma = sqrt(0.8 DN + 12^2)), both in DN space; DN = reflectance / coefficient, rounded and
  clipped to 1..65535 inside the AOI (0 is nodata).

  TOA reflectance end points (Blue, Green, Red, NIR). They are plausible late-summer magnitudes
  for the Central Valley, chosen after typical Landsat / PlanetScope TOA values of irrigated crops,
  senesced annual grassland, soils, water and built surfaces (TOA blue carries ~0.04-0.05 of
  Rayleigh path radiance), not measurements:

  ============== =========================== ===========================
  material       weak / dark end             vigorous / bright end
  ============== =========================== ===========================
  green canopy   .078 .092 .068 .28          .064 .082 .036 .46
  pasture        .080 .094 .075 .26          .066 .084 .045 .40
  senescent      .094 .112 .130 .24          .082 .100 .090 .31
  orchard crown  .068 .080 .052 .28          .060 .074 .036 .42
  citrus crown   .064 .074 .048 .24          .058 .068 .034 .33
  vine canopy    .072 .086 .058 .27          .064 .080 .040 .40
  riparian crown .064 .074 .048 .22          .058 .070 .034 .38
  weeds          .082 .096 .085 .24          .070 .088 .050 .34
  marsh (tule)   .070 .082 .060 .20          .064 .080 .045 .32
  dry grass      .092 .110 .130 .21          .112 .138 .180 .28
  stubble        .092 .108 .125 .20          .115 .142 .185 .28
  soil           .080 .088 .095 .14          .125 .155 .200 .27
  water          .072 .062 .036 .015         .090 .085 .060 .040
  asphalt        .080 .080 .080 .09          .110 .110 .115 .14
  gravel         .120 .130 .140 .17          .170 .180 .200 .24
  bright roof    .140 .150 .160 .19          .240 .250 .270 .30
  dark roof      .070 .070 .070 .08          .100 .095 .100 .13
  tile roof      .090 .090 .120 .16          .110 .110 .170 .22
  cloud          .40  .40  .41  .44          .50  .50  .51  .55
  ============== =========================== ===========================

**Why the task is honest.** Crop and non-crop share materials: harvested grain stubble, dry pasture
and dry annual grassland are the same golden grass; fallow crop fields and idle land are the same
soil; orchard and citrus crowns overlap riparian and oak crowns; weedy idle land, ditches and
wetland overlap thin pasture; drying corn sits between green canopy and grass. Vineyards, row crops,
young orchards and every headland are per pixel partly soil, and lost / new cropland
(``change_rate``) makes the label-year truth disagree with the image. Brightness alone separates
nothing: crop and non-crop medians differ by less than half a standard deviation. A KNN (k=15) on
the 4 reflectances, trained on 20k pixels of the DWR test AOI and scored on 20k pixels of the DWR
train AOI, reaches a weighted F1 of about 0.79 (crop 0.85, non-crop 0.48, non-crop precision about
0.4; the reference reached 0.77 and 0.32). The same KNN voted per field reaches about 0.87, so the
row / crown texture, the homogeneity of units and their shapes leave a spatial model clearly more
to work with.

Clouds (``clouds`` > 0): blobs of thresholded smooth noise covering that share of the AOI, white with
soft hazy fringes, and their shadows displaced by a fixed sun offset (sun azimuth 140 deg, clouds
300 m away in the image). The UDM2 flags them (cloud cores, light haze at fringes, shadow); the label
rasters ignore them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from rasterio.features import rasterize
from scipy import ndimage, special
from shapely import affinity
from shapely.geometry import LineString, MultiPoint, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from cropseg.config import DWR_CROP_CLASSES
from cropseg.errors import InputError, NoOverlapError
from cropseg.grid import Grid
from cropseg.label import CROP, NODATA, NONCROP, aoi_mask, crop_polygons, rasterize_labels
from cropseg.manifest import file_digest, now_iso, software_versions, write_manifest
from cropseg.radiometry import UDM2_BANDS, SceneMetadata, planet_metadata_xml
from cropseg.raster_io import atomic_path, write_raster
from cropseg.vector_io import read_vector, write_geojson, write_gpkg

__all__ = [
    "COVERS",
    "REFERENCE_COEFFICIENTS",
    "SynthScene",
    "procedural_layout",
    "run_synth",
    "synthesize",
    "write_synth",
]

#: Reflectance coefficients (Blue, Green, Red, NIR) of the reference test scene 20160831_180257_0e26.
REFERENCE_COEFFICIENTS: tuple[float, float, float, float] = (
    2.18308670474847e-05,
    2.3015015180605666e-05,
    2.565908193739518e-05,
    3.8835539237005976e-05,
)
BAND_NAMES: tuple[str, ...] = ("blue", "green", "red", "nir")
ACQUIRED = "2016-08-31T18:02:57+00:00"
MAX_PIXELS = 40_000_000

# -- materials: (weak/dark end, vigorous/bright end), TOA reflectance B, G, R, NIR ------------------
_MATERIALS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "green": ((0.078, 0.092, 0.068, 0.28), (0.064, 0.082, 0.036, 0.46)),
    "pasture": ((0.080, 0.094, 0.075, 0.26), (0.066, 0.084, 0.045, 0.40)),
    "senescent": ((0.094, 0.112, 0.130, 0.24), (0.082, 0.100, 0.090, 0.31)),
    "tree": ((0.068, 0.080, 0.052, 0.28), (0.060, 0.074, 0.036, 0.42)),
    "citrus": ((0.064, 0.074, 0.048, 0.24), (0.058, 0.068, 0.034, 0.33)),
    "vine": ((0.072, 0.086, 0.058, 0.27), (0.064, 0.080, 0.040, 0.40)),
    "riparian": ((0.064, 0.074, 0.048, 0.22), (0.058, 0.070, 0.034, 0.38)),
    "weeds": ((0.082, 0.096, 0.085, 0.24), (0.070, 0.088, 0.050, 0.34)),
    "marsh": ((0.070, 0.082, 0.060, 0.20), (0.064, 0.080, 0.045, 0.32)),
    "dry_grass": ((0.092, 0.110, 0.130, 0.21), (0.112, 0.138, 0.180, 0.28)),
    "stubble": ((0.092, 0.108, 0.125, 0.20), (0.115, 0.142, 0.185, 0.28)),
    "soil": ((0.080, 0.088, 0.095, 0.14), (0.125, 0.155, 0.200, 0.27)),
    "water": ((0.072, 0.062, 0.036, 0.015), (0.090, 0.085, 0.060, 0.040)),
    "asphalt": ((0.080, 0.080, 0.080, 0.09), (0.110, 0.110, 0.115, 0.14)),
    "gravel": ((0.120, 0.130, 0.140, 0.17), (0.170, 0.180, 0.200, 0.24)),
    "roof_bright": ((0.140, 0.150, 0.160, 0.19), (0.240, 0.250, 0.270, 0.30)),
    "roof_dark": ((0.070, 0.070, 0.070, 0.08), (0.100, 0.095, 0.100, 0.13)),
    "roof_tile": ((0.090, 0.090, 0.120, 0.16), (0.110, 0.110, 0.170, 0.22)),
}
_CLOUD = (np.array([0.40, 0.40, 0.41, 0.44], np.float32), np.array([0.50, 0.50, 0.51, 0.55], np.float32))
_MATERIAL_NAMES = tuple(_MATERIALS)
_MAT_E0 = np.array([_MATERIALS[m][0] for m in _MATERIAL_NAMES], dtype=np.float32)
_MAT_E1 = np.array([_MATERIALS[m][1] for m in _MATERIAL_NAMES], dtype=np.float32)

# -- spatial patterns -------------------------------------------------------------------------------
_SOLID, _ROWS, _CROWNS, _CANOPY, _SPARSE, _URBAN, _ROAD = range(7)


@dataclass(frozen=True)
class _Cover:
    """How one land cover is painted."""

    crop: bool  # a crop cover (used where a field is rendered as crop)
    pattern: int
    a: tuple[str, ...]  # candidate primary materials
    b: tuple[str, ...]  # candidate background materials
    frac: tuple[float, float]  # range of the primary fraction (canopy cover)
    patch: float = 0.1  # amplitude of medium-scale patches of the fraction
    lowfreq: float = 0.05  # amplitude of low-frequency brightness variation
    pixel: float = 0.04  # per-pixel brightness variation
    period_m: tuple[float, float] = (0.0, 0.0)  # row / crown period in metres
    contrast: float = 0.75  # amplitude of the row / crown pattern in the fraction
    headland_m: tuple[float, float] = (0.0, 0.0)  # width of the bare field edge / headland


_OPEN = (0.0, 4.0)  # bare field edge of open crops, metres
_HEADLAND = (3.0, 9.0)  # headland of row crops, orchards and vineyards, metres
_COVER_SPECS: dict[str, _Cover] = {
    # crop covers
    "green_crop": _Cover(True, _SOLID, ("green",), ("soil",), (0.85, 1.0), 0.10, 0.05, 0.035, headland_m=_OPEN),
    "senescent_crop": _Cover(True, _SOLID, ("senescent",), ("soil", "dry_grass"), (0.7, 0.95), 0.15, 0.06, 0.04,
                             headland_m=_OPEN),
    "row_crop": _Cover(True, _ROWS, ("green",), ("soil",), (0.45, 0.8), 0.10, 0.05, 0.04, (5.0, 7.5),
                       headland_m=_HEADLAND),
    "pasture": _Cover(True, _SOLID, ("pasture",), ("dry_grass",), (0.7, 0.95), 0.18, 0.06, 0.045, headland_m=_OPEN),
    "hay_regrowth": _Cover(True, _SOLID, ("pasture",), ("stubble",), (0.25, 0.6), 0.12, 0.06, 0.05,
                           headland_m=_OPEN),
    "dry_pasture": _Cover(True, _SOLID, ("dry_grass",), ("soil",), (0.8, 1.0), 0.12, 0.07, 0.04, headland_m=_OPEN),
    "stubble": _Cover(True, _ROWS, ("stubble",), ("soil",), (0.55, 0.95), 0.15, 0.06, 0.04, (9.0, 15.0), 0.25,
                      headland_m=_OPEN),
    "orchard": _Cover(True, _CROWNS, ("tree",), ("soil", "dry_grass", "weeds"), (0.45, 0.9), 0.06, 0.04, 0.05,
                      (6.0, 9.5), 0.45, headland_m=_HEADLAND),
    "citrus": _Cover(True, _CROWNS, ("citrus",), ("soil", "dry_grass"), (0.6, 0.9), 0.05, 0.04, 0.05, (5.5, 7.5),
                     0.45, headland_m=_HEADLAND),
    "vineyard": _Cover(True, _ROWS, ("vine",), ("soil", "dry_grass"), (0.3, 0.65), 0.08, 0.05, 0.05, (7.5, 11.0),
                       headland_m=_HEADLAND),
    "fallow": _Cover(True, _ROWS, ("soil",), ("dry_grass", "stubble", "weeds"), (0.55, 1.0), 0.20, 0.07, 0.04,
                     (4.0, 8.0), 0.2, headland_m=_OPEN),
    # non-crop covers
    "dry_grass": _Cover(False, _SOLID, ("dry_grass",), ("soil",), (0.75, 1.0), 0.15, 0.07, 0.045),
    "oak_savanna": _Cover(False, _SPARSE, ("riparian",), ("dry_grass",), (0.08, 0.35), 0.0, 0.06, 0.05),
    "idle": _Cover(False, _SOLID, ("soil",), ("dry_grass", "stubble"), (0.55, 1.0), 0.20, 0.07, 0.04),
    "weedy_idle": _Cover(False, _SOLID, ("weeds",), ("soil", "dry_grass"), (0.15, 0.5), 0.30, 0.06, 0.05),
    "riparian": _Cover(False, _CANOPY, ("riparian",), ("dry_grass", "soil"), (0.7, 0.95), 0.15, 0.05, 0.07),
    "wetland": _Cover(False, _SOLID, ("marsh",), ("water",), (0.65, 0.95), 0.2, 0.05, 0.05),
    "water": _Cover(False, _SOLID, ("water",), ("water",), (1.0, 1.0), 0.0, 0.04, 0.02),
    "farmstead": _Cover(False, _URBAN, ("roof_bright",), ("dry_grass",), (1.0, 1.0), 0.0, 0.04, 0.05),
    "urban": _Cover(False, _URBAN, ("roof_bright",), ("dry_grass",), (1.0, 1.0), 0.0, 0.04, 0.05),
    "road": _Cover(False, _ROAD, ("asphalt", "gravel"), ("dry_grass",), (1.0, 1.0), 0.0, 0.04, 0.04),
    "track": _Cover(False, _ROAD, ("soil",), ("dry_grass",), (1.0, 1.0), 0.0, 0.05, 0.04),
    "ditch": _Cover(False, _ROAD, ("weeds", "marsh"), ("dry_grass",), (1.0, 1.0), 0.0, 0.05, 0.05),
}
#: Names of the land covers, indexed by the values of :attr:`SynthScene.cover` (255 = outside the AOI).
COVERS: tuple[str, ...] = tuple(_COVER_SPECS)
_COVER_INDEX = {name: i for i, name in enumerate(COVERS)}

# material weights of house-sized blocks in towns and farmsteads
@dataclass(frozen=True)
class _Built:
    """Layout of a built-up cover: street grid, lots with one building each, and yards."""

    street_every_m: tuple[float, float]  # street spacing (0: no streets)
    street_m: float
    lot_m: tuple[float, float]  # lot side
    roof: tuple[float, float]  # share of the lot side covered by the building
    built_share: float  # share of lots with a building
    roofs: tuple[tuple[str, float], ...]
    yards: tuple[tuple[str, float], ...]


_BUILT: dict[str, _Built] = {
    "urban": _Built((70.0, 110.0), 11.0, (14.0, 24.0), (0.45, 0.75), 0.9,
                    (("roof_bright", 0.45), ("roof_dark", 0.35), ("roof_tile", 0.20)),
                    (("green", 0.35), ("tree", 0.30), ("dry_grass", 0.25), ("soil", 0.10))),
    "farmstead": _Built((0.0, 0.0), 0.0, (25.0, 50.0), (0.3, 0.6), 0.45,
                        (("roof_bright", 0.60), ("roof_dark", 0.30), ("roof_tile", 0.10)),
                        (("gravel", 0.35), ("dry_grass", 0.30), ("tree", 0.20), ("soil", 0.15))),
}

Mix = tuple[tuple[str, float], ...]
#: Late-August covers of each DWR crop class.
_CLASS_COVERS: dict[str, Mix] = {
    "G": (("stubble", 0.58), ("hay_regrowth", 0.18), ("fallow", 0.12), ("green_crop", 0.12)),
    "R": (("green_crop", 0.85), ("senescent_crop", 0.15)),
    "F": (("green_crop", 0.45), ("senescent_crop", 0.30), ("row_crop", 0.12), ("fallow", 0.08), ("stubble", 0.05)),
    "P": (("pasture", 0.55), ("hay_regrowth", 0.25), ("dry_pasture", 0.20)),
    "T": (("row_crop", 0.60), ("fallow", 0.28), ("green_crop", 0.12)),
    "D": (("orchard", 0.94), ("fallow", 0.06)),
    "C": (("citrus", 0.94), ("fallow", 0.06)),
    "V": (("vineyard", 0.95), ("fallow", 0.05)),
}
#: Share of each class, for polygons whose class is unknown and for the procedural layout.
_CLASS_SHARE: Mix = (("G", 0.14), ("R", 0.03), ("F", 0.20), ("P", 0.14), ("T", 0.08), ("D", 0.20), ("C", 0.04),
                     ("V", 0.17))
_FREE_SMALL: Mix = (("farmstead", 0.35), ("dry_grass", 0.27), ("idle", 0.15), ("weedy_idle", 0.11),
                    ("riparian", 0.10), ("water", 0.02))
_FREE_LARGE: Mix = (("dry_grass", 0.42), ("idle", 0.19), ("weedy_idle", 0.12), ("oak_savanna", 0.10),
                    ("farmstead", 0.06), ("riparian", 0.06), ("wetland", 0.03), ("water", 0.02))
_THIN: Mix = (("road", 0.45), ("track", 0.35), ("ditch", 0.20))
_LOST: Mix = (("idle", 0.45), ("dry_grass", 0.35), ("weedy_idle", 0.20))
#: DWR non-crop CLASS1 codes (longest prefix wins) and the cover drawn for them.
_NONCROP_CODES: tuple[tuple[str, str], ...] = (
    ("NW", "water"), ("NR", "riparian"), ("NV", "dry_grass"), ("NC", "dry_grass"), ("NB", "idle"),
    ("UL", "urban"), ("UV", "dry_grass"), ("U", "urban"), ("S", "farmstead"), ("I", "idle"), ("E", "idle"),
)
_SMALL_PIECE_M2 = 15_000.0  # enclosed non-crop pieces below this are mostly farmsteads
_SPLIT_PIECE_M2 = 250_000.0  # open non-crop areas above this are cut into Voronoi cells
_CELL_M = 250.0
_SUN_OFFSET_M = (-193.0, 230.0)  # shadow displacement (east, north): sun at azimuth 140 deg, 300 m away


@dataclass(frozen=True, eq=False)
class SynthScene:
    """A synthetic PlanetScope-like analytic scene and its truth.

    Attributes:
        grid: UTM grid of the scene at ``res`` metres.
        dn: uint16 (4, rows, cols) Blue, Green, Red, NIR radiance DNs; 0 = nodata (outside the AOI).
        udm2: uint8 (8, rows, cols) in :data:`cropseg.radiometry.UDM2_BANDS` order.
        labels: uint8 (rows, cols) label-year truth: 1 crop, 0 non-crop, 255 outside the AOI.
        actual: uint8 (rows, cols) image-year truth (after change), same coding.
        metadata: scene metadata with the reflectance coefficients used.
        fields: every unit drawn, in the grid CRS: ``unit`` (its id), ``cover``, ``crop_label``,
            ``crop_actual``, ``changed``, ``CLASS1`` (class code or None).
        aoi: the AOI, EPSG:4326.
        cover: uint8 (rows, cols) index into :data:`COVERS` of the cover painted; 255 outside the AOI.
        seed: the seed used.
        change_rate: share of fields changed between label and image year.
        clouds: share of the AOI under cloud or haze.
        crop_classes: ``CLASS1`` codes of :attr:`fields` that are crop.
    """

    grid: Grid
    dn: np.ndarray
    udm2: np.ndarray
    labels: np.ndarray
    actual: np.ndarray
    metadata: SceneMetadata
    fields: gpd.GeoDataFrame
    aoi: gpd.GeoDataFrame
    cover: np.ndarray | None = None
    seed: int = 0
    change_rate: float = 0.1
    clouds: float = 0.0
    crop_classes: tuple[str, ...] = DWR_CROP_CLASSES

    def reflectance(self) -> np.ndarray:
        """TOA reflectance, float32 (4, rows, cols); 0 outside the AOI."""
        coeffs = np.asarray(self.metadata.reflectance_coefficients, dtype=np.float32)[:, None, None]
        return self.dn.astype(np.float32) * coeffs


# -- small helpers ----------------------------------------------------------------------------------


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _check_fraction(name: str, value: float, flag: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InputError(f"{name} must be a fraction between 0 and 1, got {value!r}; pass e.g. {flag} 0.1")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")


def _rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0xC50]).spawn(n)]


def _draw(rng: np.random.Generator, mix: Mix) -> str:
    names = [m[0] for m in mix]
    p = np.array([m[1] for m in mix], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _polygonal(geom: BaseGeometry | None) -> BaseGeometry | None:
    """The polygonal part of a geometry (Polygon / MultiPolygon), or None when it has none."""
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    if not parts:
        return None
    out: BaseGeometry = shapely.union_all(parts)
    return out


def _explode(geom: BaseGeometry | None, min_area: float) -> list[Polygon]:
    poly = _polygonal(geom)
    if poly is None:
        return []
    return [p for p in shapely.get_parts(poly) if p.geom_type == "Polygon" and p.area >= min_area]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-variance float32 noise with a correlation length of about ``scale_px`` pixels."""
    h, w = shape
    if scale_px <= 2.0:
        z = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.5 * max(scale_px, 0.6))
    else:
        ch, cw = int(h / scale_px) + 4, int(w / scale_px) + 4
        coarse = rng.standard_normal((ch, cw), dtype=np.float32)
        big = ndimage.zoom(coarse, scale_px, order=3, mode="mirror")
        r0 = int(rng.integers(0, max(1, big.shape[0] - h)))
        c0 = int(rng.integers(0, max(1, big.shape[1] - w)))
        z = np.ascontiguousarray(big[r0 : r0 + h, c0 : c0 + w])
    z -= z.mean(dtype=np.float64)
    z /= max(float(z.std(dtype=np.float64)), 1e-6)
    return np.asarray(z, dtype=np.float32)


# -- the landscape plan shared by procedural_layout and synthesize ----------------------------------


@dataclass(frozen=True)
class _Plan:
    river: LineString
    water: BaseGeometry
    corridor: BaseGeometry  # riparian corridor including the water
    town: BaseGeometry


def _landscape_plan(bounds: tuple[float, float, float, float], seed: int) -> _Plan:
    """A seeded meandering river corridor and a town blob for an AOI's bounds (metres)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9147]))
    x0, y0, x1, y1 = bounds
    w, h = x1 - x0, y1 - y0
    along_x = bool(rng.random() < 0.5)
    length, across = (w, h) if along_x else (h, w)
    t = np.linspace(-0.05, 1.05, 240)
    base = rng.uniform(0.2, 0.8) * across
    tilt = rng.uniform(-0.15, 0.15) * across
    a1, k1, p1 = rng.uniform(0.05, 0.12) * across, rng.uniform(1.0, 2.5), rng.uniform(0, 2 * np.pi)
    a2, k2, p2 = rng.uniform(0.01, 0.04) * across, rng.uniform(3.0, 6.0), rng.uniform(0, 2 * np.pi)
    off = base + tilt * (t - 0.5) + a1 * np.sin(2 * np.pi * k1 * t + p1) + a2 * np.sin(2 * np.pi * k2 * t + p2)
    along = t * length
    xs, ys = (x0 + along, y0 + off) if along_x else (x0 + off, y0 + along)
    river = LineString(np.column_stack([xs, ys]))
    half_water = rng.uniform(6.0, 18.0)
    half_corridor = half_water + rng.uniform(25.0, 70.0)
    water = river.buffer(half_water)
    corridor = river.buffer(half_corridor)
    radius = float(np.clip(0.09 * min(w, h), 60.0, 700.0))
    cx, cy = x0 + w / 2, y0 + h / 2
    for _ in range(40):
        cx, cy = x0 + rng.uniform(0.15, 0.85) * w, y0 + rng.uniform(0.15, 0.85) * h
        if Point(cx, cy).distance(river) > half_corridor + radius:
            break
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    q1, q2 = rng.uniform(0, 2 * np.pi, 2)
    rad = radius * (1 + 0.18 * np.sin(2 * angles + q1) + 0.1 * np.sin(3 * angles + q2))
    town = Polygon(np.column_stack([cx + rad * np.cos(angles), cy + rad * np.sin(angles)]))
    return _Plan(river=river, water=water, corridor=corridor, town=town)


# -- procedural layout -------------------------------------------------------------------------------


def procedural_layout(
    seed: int = 0,
    size_m: tuple[float, float] = (3000.0, 3000.0),
    origin_lonlat: tuple[float, float] = (-121.30, 38.30),
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """A plausible Central-Valley field layout and its AOI, for demos and tests.

    Rectangular fields of varied size in blocks between a jittered road grid, separated by farm
    tracks; some fields have a farmstead hole, some are MultiPolygons (cut by a canal or by the
    river corridor); a meandering river corridor and a small town carry no field. Like the DWR
    survey, only crop fields are polygons: everything else in the AOI is non-crop, and about a fifth
    of the blocks' fields are left unmapped (idle land, grassland).

    Args:
        seed: random seed; :func:`synthesize` with the same seed draws the same river and town.
        size_m: (width, height) of the AOI in metres.
        origin_lonlat: (lon, lat) of the AOI's south-west corner.

    Returns:
        (truth, aoi): crop polygons with a DWR ``CLASS1`` code (and ``ACRES``), and a one-row AOI
        that is a lon/lat rectangle, both EPSG:4326.
    """
    _check_seed(seed)
    width, height = (float(v) for v in size_m)
    if not (math.isfinite(width) and math.isfinite(height) and width >= 60.0 and height >= 60.0):
        raise InputError(f"size_m must be at least 60 m x 60 m, got {size_m!r}")
    lon0, lat0 = origin_lonlat
    if not (-180.0 <= lon0 <= 180.0 and -80.0 <= lat0 <= 84.0):
        raise InputError(f"origin_lonlat must be (lon, lat) in degrees inside the UTM zones, got {origin_lonlat!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1A4]))
    origin = gpd.GeoDataFrame(geometry=[Point(lon0, lat0)], crs="EPSG:4326")
    utm = origin.estimate_utm_crs()
    ox, oy = origin.to_crs(utm).geometry.iloc[0].coords[0]
    corners = gpd.GeoSeries([Point(ox, oy), Point(ox + width, oy + height)], crs=utm).to_crs("EPSG:4326")
    (la, ba), (ra, ta) = corners.iloc[0].coords[0], corners.iloc[1].coords[0]
    aoi = gpd.GeoDataFrame(geometry=[box(la, ba, ra, ta)], crs="EPSG:4326")
    aoi_geom = aoi.to_crs(utm).geometry.iloc[0]
    x0, y0, x1, y1 = aoi_geom.bounds
    plan = _landscape_plan((x0, y0, x1, y1), seed)

    def road_lines(lo: float, hi: float) -> list[float]:
        out = [lo]
        pos = lo + rng.uniform(150.0, 450.0)
        while pos < hi - 120.0:
            out.append(pos)
            pos += rng.uniform(450.0, 900.0)
        out.append(hi)
        return out

    xs, ys = road_lines(x0, x1), road_lines(y0, y1)
    half_road = 6.0
    rects: list[Polygon] = []

    def split(r: tuple[float, float, float, float], depth: int) -> None:
        a, b, c, d = r
        w, h = c - a, d - b
        longest = max(w, h)
        if depth > 8 or longest < 120.0 or (longest < 420.0 and rng.random() < 0.45):
            rects.append(box(a, b, c, d))
            return
        gap = float(rng.choice([0.0, 3.0, 6.0, 9.0]))
        f = rng.uniform(0.3, 0.7)
        if w >= h:
            m = a + f * w
            split((a, b, m - gap / 2, d), depth + 1)
            split((m + gap / 2, b, c, d), depth + 1)
        else:
            m = b + f * h
            split((a, b, c, m - gap / 2), depth + 1)
            split((a, m + gap / 2, c, d), depth + 1)

    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            a = xs[i] + (half_road if i > 0 else 0.0)
            c = xs[i + 1] - (half_road if i + 1 < len(xs) - 1 else 0.0)
            b = ys[j] + (half_road if j > 0 else 0.0)
            d = ys[j + 1] - (half_road if j + 1 < len(ys) - 1 else 0.0)
            if c - a > 20.0 and d - b > 20.0:
                split((a, b, c, d), 0)

    geoms: list[BaseGeometry] = []
    codes: list[str] = []
    for rect in rects:
        if rect.intersection(plan.town).area > 0.25 * rect.area:
            continue
        if rng.random() < 0.2:
            continue  # unmapped: idle land, grassland, farm yard
        geom = _polygonal(rect.difference(plan.corridor).intersection(aoi_geom))
        if geom is None or geom.area < 1500.0:
            continue
        code = _draw(rng, _CLASS_SHARE)
        if geom.geom_type == "Polygon" and geom.area > 50_000.0 and rng.random() < 0.15:
            a, b, c, d = geom.bounds
            hw, hh = rng.uniform(35.0, 80.0), rng.uniform(35.0, 80.0)
            hx = a + 20.0 + rng.random() * max(1.0, c - a - 40.0 - hw)
            hy = b + 20.0 + rng.random() * max(1.0, d - b - 40.0 - hh)
            hole = box(hx, hy, hx + hw, hy + hh)
            if geom.buffer(-15.0).contains(hole):
                geom = geom.difference(hole)  # a farmstead inside the field
        elif geom.geom_type == "Polygon" and geom.area > 40_000.0 and rng.random() < 0.08:
            a, b, c, d = geom.bounds
            if c - a >= d - b:
                m = a + rng.uniform(0.35, 0.65) * (c - a)
                canal = box(m - 4.0, b - 1.0, m + 4.0, d + 1.0)
            else:
                m = b + rng.uniform(0.35, 0.65) * (d - b)
                canal = box(a - 1.0, m - 4.0, c + 1.0, m + 4.0)
            geom = _polygonal(geom.difference(canal)) or geom  # one field in two parts
        geoms.append(geom)
        codes.append(code)
    truth = gpd.GeoDataFrame(
        {"CLASS1": codes, "ACRES": [round(g.area / 4046.856, 2) for g in geoms]}, geometry=geoms, crs=utm
    ).to_crs("EPSG:4326")
    return truth, aoi


# -- units: every polygon that gets painted -----------------------------------------------------------


@dataclass
class _Units:
    geoms: list[BaseGeometry]
    cover: list[str]
    crop_label: list[bool]
    crop_actual: list[bool]
    changed: list[bool]
    class1: list[str | None]

    def add(self, geom: BaseGeometry, cover: str, label: bool, actual: bool, changed: bool, code: str | None) -> None:
        self.geoms.append(geom)
        self.cover.append(cover)
        self.crop_label.append(label)
        self.crop_actual.append(actual)
        self.changed.append(changed)
        self.class1.append(code)


def _noncrop_cover(code: str) -> str | None:
    upper = code.upper()
    for prefix, cover in _NONCROP_CODES:
        if upper.startswith(prefix):
            return cover
    return None


def _plan_units(
    truth: gpd.GeoDataFrame,
    aoi_geom: BaseGeometry,
    field: str | None,
    crop_classes: Sequence[str],
    seed: int,
    change_rate: float,
    res: float,
    rng: np.random.Generator,
) -> _Units:
    """Split the AOI into painted units (truth CRS = grid CRS, metres)."""
    units = _Units([], [], [], [], [], [])
    crops = crop_polygons(truth, field, crop_classes)
    crop_geoms = shapely.intersection(np.asarray(crops.geometry.values), aoi_geom)
    raw_codes: list[str | None] = [None] * len(crops) if field is None else [str(v) for v in crops[field]]
    unknown_class: dict[str, str] = {c: _draw(rng, _CLASS_SHARE) for c in sorted({c for c in raw_codes if c})}
    crop_kept: list[tuple[BaseGeometry, str, str]] = []  # geometry, CLASS1, cover class
    for geom, code in zip(crop_geoms, raw_codes, strict=True):
        poly = _polygonal(geom)
        if poly is None:
            continue
        if code is None:
            klass = _draw(rng, _CLASS_SHARE)
            code = klass
        else:
            klass = code.upper() if code.upper() in _CLASS_COVERS else unknown_class[code]
        crop_kept.append((poly, code, klass))

    # label-year crop fields, some lost by the image year
    n_change = int(round(change_rate * len(crop_kept)))
    n_lost = n_change // 2
    n_new = n_change - n_lost
    lost = set(rng.choice(len(crop_kept), size=n_lost, replace=False).tolist()) if n_lost else set()
    for i, (poly, code, klass) in enumerate(crop_kept):
        if i in lost:
            units.add(poly, _draw(rng, _LOST), True, False, True, code)
        else:
            units.add(poly, _draw(rng, _CLASS_COVERS[klass]), True, True, False, code)

    occupied: list[BaseGeometry] = [g for g, _, _ in crop_kept]
    if field is not None:
        others = truth[~truth.index.isin(crops.index)]
        mapped = [(g, str(c), _noncrop_cover(str(c))) for g, c in zip(others.geometry, others[field], strict=True)]
        top = shapely.union_all(occupied) if occupied else None
        for geom, code, cover in mapped:
            if cover is None:
                continue
            poly = geom.intersection(aoi_geom)
            if top is not None:
                poly = poly.difference(top)
            poly = _polygonal(poly)
            if poly is not None and poly.area >= res * res:
                units.add(poly, cover, False, False, False, code)
                occupied.append(poly)

    # the unmapped rest: roads, river, town, fields and open land
    sliver = 0.5 * res * res
    free = aoi_geom.difference(shapely.union_all(occupied)) if occupied else aoi_geom
    r = 3.0 * res
    thick = free.buffer(-r, join_style="mitre").buffer(r, join_style="mitre").intersection(free)
    thin = free.difference(thick)
    bounds = aoi_geom.bounds
    plan = _landscape_plan(bounds, seed)
    water = thick.intersection(plan.water)
    riparian = thick.intersection(plan.corridor).difference(plan.water)
    town = thick.intersection(plan.town).difference(plan.corridor)
    rest = thick.difference(plan.corridor).difference(plan.town)

    x0, y0, x1, y1 = bounds
    n_cells = max(4, int(math.ceil((x1 - x0) * (y1 - y0) / _CELL_M**2)))
    pts = np.column_stack([rng.uniform(x0, x1, n_cells), rng.uniform(y0, y1, n_cells)])
    frame = box(x0 - 1, y0 - 1, x1 + 1, y1 + 1)
    cells = shapely.intersection(
        np.asarray(shapely.get_parts(shapely.voronoi_polygons(MultiPoint(pts), extend_to=frame))), frame
    )
    tree = shapely.STRtree(cells)

    def split(geom: BaseGeometry, min_area_to_split: float) -> list[Polygon]:
        out: list[Polygon] = []
        for part in _explode(geom, sliver):
            if part.area <= min_area_to_split:
                out.append(part)
                continue
            idx = tree.query(part, predicate="intersects")
            for piece in shapely.intersection(cells[idx], part):
                out.extend(_explode(piece, sliver))
        return out

    for piece in split(thin, 0.0):
        units.add(piece, _draw(rng, _THIN), False, False, False, None)
    for piece in split(water, _SPLIT_PIECE_M2):
        units.add(piece, "water", False, False, False, None)
    for piece in split(riparian, 0.0):
        units.add(piece, "riparian", False, False, False, None)
    for piece in split(town, 0.0):
        units.add(piece, "urban", False, False, False, None)

    pieces = split(rest, _SPLIT_PIECE_M2)
    order = rng.permutation(len(pieces))
    new_done = 0
    for k in order.tolist():
        piece = pieces[k]
        small = piece.area < _SMALL_PIECE_M2
        if new_done < n_new and piece.area >= 10_000.0:
            if piece.area > 120_000.0:
                rect = shapely.minimum_rotated_rectangle(piece)
                f = math.sqrt(rng.uniform(0.3, 0.6))
                new_geom = _polygonal(piece.intersection(affinity.scale(rect, f, f, origin="centroid")))
            else:
                new_geom = piece
            if new_geom is not None and new_geom.area >= 5_000.0:
                klass = _draw(rng, _CLASS_SHARE)
                mix = tuple(m for m in _CLASS_COVERS[klass] if m[0] != "fallow")
                units.add(new_geom, _draw(rng, mix), False, True, True, klass)
                new_done += 1
                remainder = _explode(piece.difference(new_geom), sliver)
                for rem in remainder:
                    units.add(rem, _draw(rng, _FREE_SMALL if rem.area < _SMALL_PIECE_M2 else _FREE_LARGE),
                              False, False, False, None)
                continue
        units.add(piece, _draw(rng, _FREE_SMALL if small else _FREE_LARGE), False, False, False, None)
    return units


# -- rendering ---------------------------------------------------------------------------------------


def _long_axis_angle(geom: BaseGeometry) -> float:
    """Angle (radians, from the x axis) of the long side of a polygon's minimum rotated rectangle."""
    rect = shapely.minimum_rotated_rectangle(geom)
    coords = np.asarray(shapely.get_coordinates(rect))
    if len(coords) < 4:
        return 0.0
    d1, d2 = coords[1] - coords[0], coords[2] - coords[1]
    d = d1 if np.hypot(*d1) >= np.hypot(*d2) else d2
    return float(math.atan2(d[1], d[0]))


@dataclass
class _UnitParams:
    cover: np.ndarray  # uint8 index into COVERS
    pattern: np.ndarray  # int8
    a: np.ndarray  # float32 (n, 4)
    b: np.ndarray  # float32 (n, 4)
    frac: np.ndarray
    patch: np.ndarray
    lowfreq: np.ndarray
    pixel: np.ndarray
    period1: np.ndarray  # pixels, along the rows / between trees
    period2: np.ndarray  # pixels, across the rows (crowns)
    cos: np.ndarray
    sin: np.ndarray
    phase1: np.ndarray
    phase2: np.ndarray
    threshold: np.ndarray  # sparse trees: noise threshold
    margin: np.ndarray  # pixels: headland / field edge showing the background material
    contrast: np.ndarray  # amplitude of the row / crown pattern


def _material(rng: np.random.Generator, name: str) -> np.ndarray:
    e0, e1 = (np.asarray(e, dtype=np.float32) for e in _MATERIALS[name])
    t = rng.random()
    spec = e0 + np.float32(t) * (e1 - e0)
    return (spec * (1.0 + 0.03 * rng.standard_normal(4))).astype(np.float32)


def _unit_params(units: _Units, grid: Grid, rng: np.random.Generator) -> _UnitParams:
    n = len(units.geoms) + 1  # index 0: no unit
    res = grid.res[0]
    p = _UnitParams(
        cover=np.zeros(n, np.uint8), pattern=np.zeros(n, np.int8), a=np.zeros((n, 4), np.float32),
        b=np.zeros((n, 4), np.float32), frac=np.ones(n, np.float32), patch=np.zeros(n, np.float32),
        lowfreq=np.zeros(n, np.float32), pixel=np.zeros(n, np.float32), period1=np.ones(n, np.float32),
        period2=np.ones(n, np.float32), cos=np.ones(n, np.float32), sin=np.zeros(n, np.float32),
        phase1=np.zeros(n, np.float32), phase2=np.zeros(n, np.float32), threshold=np.zeros(n, np.float32),
        margin=np.zeros(n, np.float32), contrast=np.zeros(n, np.float32),
    )
    p.cover[0] = _COVER_INDEX["dry_grass"]
    p.a[0] = p.b[0] = np.asarray(_MATERIALS["dry_grass"][0], np.float32)
    # the image's own orientation: rows in grid pixel space run along +col (x) and +row (-y)
    for i, (geom, cover) in enumerate(zip(units.geoms, units.cover, strict=True), start=1):
        spec = _COVER_SPECS[cover]
        p.cover[i] = _COVER_INDEX[cover]
        p.pattern[i] = spec.pattern
        p.a[i] = _material(rng, spec.a[int(rng.integers(len(spec.a)))])
        p.b[i] = _material(rng, spec.b[int(rng.integers(len(spec.b)))])
        p.frac[i] = rng.uniform(*spec.frac)
        p.patch[i] = spec.patch * rng.uniform(0.6, 1.4)
        p.lowfreq[i] = spec.lowfreq * rng.uniform(0.6, 1.4)
        p.pixel[i] = spec.pixel * rng.uniform(0.7, 1.3)
        if spec.pattern in (_ROWS, _CROWNS):
            angle = _long_axis_angle(geom) + rng.normal(0.0, 0.01)
            # grid rows grow southwards: flip the y component to pixel space
            p.cos[i], p.sin[i] = math.cos(angle), -math.sin(angle)
            p.period1[i] = max(1.2, rng.uniform(*spec.period_m) / res)
            p.period2[i] = max(1.2, p.period1[i] * rng.uniform(0.85, 1.25))
            p.phase1[i], p.phase2[i] = rng.uniform(0, 2 * np.pi, 2)
            p.contrast[i] = spec.contrast * rng.uniform(0.8, 1.2)
        if spec.pattern == _SPARSE:
            p.threshold[i] = float(special.ndtri(1.0 - p.frac[i]))
        if spec.headland_m[1] > 0:
            p.margin[i] = rng.uniform(*spec.headland_m) / res
    return p


def _sinc(period_px: np.ndarray) -> np.ndarray:
    """Contrast kept by a cosine of this period after averaging over one pixel."""
    return np.asarray(np.sinc(1.0 / period_px), dtype=np.float32)


def _hash(*keys: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random uint in [0, 2**16) of integer keys (vectorised)."""
    h = np.full(keys[0].shape, 0x345678, dtype=np.int64)
    for i, k in enumerate(keys):
        h = (h ^ (k.astype(np.int64) * (0x9E3779B1 + 2 * i))) & 0xFFFFFFFF
        h = (h * 0x85EBCA6B + (h >> 13)) & 0xFFFFFFFF
    return (h >> 8) & 0xFFFF


def _pick_material(u: np.ndarray, mix: tuple[tuple[str, float], ...]) -> np.ndarray:
    weights = np.array([m[1] for m in mix])
    cum = np.cumsum(weights / weights.sum())
    idx = np.array([_MATERIAL_NAMES.index(m[0]) for m in mix])
    return np.asarray(idx[np.minimum(np.searchsorted(cum, u), len(cum) - 1)])


def _built_spectra(
    y: np.ndarray, x: np.ndarray, uu: np.ndarray, p: _UnitParams, fine: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Reflectance (n, 4) of built-up pixels at grid metres (y down, x right) in units ``uu``."""
    table = rng.random((6, 0x10000)).astype(np.float32)
    mats = np.zeros(x.size, dtype=np.int64)
    shade = np.zeros(x.size, dtype=np.float32)
    for name, built in _BUILT.items():
        sel = np.flatnonzero(p.cover[uu] == _COVER_INDEX[name])
        if not sel.size:
            continue
        xs, ys, us = x[sel], y[sel], uu[sel]
        unit_key = _hash(us)
        lot_w = built.lot_m[0] + (built.lot_m[1] - built.lot_m[0]) * table[0][unit_key]
        lot_h = built.lot_m[0] + (built.lot_m[1] - built.lot_m[0]) * table[1][unit_key]
        street = np.zeros(sel.size, dtype=bool)
        if built.street_m > 0:
            every = built.street_every_m[0] + (built.street_every_m[1] - built.street_every_m[0]) * table[2][unit_key]
            street = (np.mod(xs, every) < built.street_m) | (np.mod(ys, every) < built.street_m)
        li, lj = np.floor(xs / lot_w), np.floor(ys / lot_h)
        lot_key = _hash(li, lj, us)
        fx, fy = xs / lot_w - li, ys / lot_h - lj
        side_x = built.roof[0] + (built.roof[1] - built.roof[0]) * table[3][lot_key]
        side_y = built.roof[0] + (built.roof[1] - built.roof[0]) * table[1][lot_key]
        roof = (np.abs(fx - 0.5) < side_x / 2) & (np.abs(fy - 0.5) < side_y / 2) & ~street
        roof &= table[0][lot_key] < built.built_share
        yard_mat = _pick_material(table[4][lot_key], built.yards)
        yard_mat = np.where(fine[sel] > 1.1, _MATERIAL_NAMES.index("tree"), yard_mat)  # yard trees
        mats[sel] = np.where(
            street, _MATERIAL_NAMES.index("asphalt"), np.where(roof, _pick_material(table[5][lot_key], built.roofs),
                                                               yard_mat)
        )
        shade[sel] = table[2][lot_key]
    t = shade[:, None]
    return np.asarray(_MAT_E0[mats] + t * (_MAT_E1[mats] - _MAT_E0[mats]))


def _render(unit: np.ndarray, p: _UnitParams, res: float, rng: np.random.Generator) -> np.ndarray:
    """TOA reflectance (4, rows, cols) float32 of the ground, from the unit raster and unit parameters."""
    shape = (int(unit.shape[0]), int(unit.shape[1]))
    h, w = shape
    pattern = p.pattern[unit]
    lowfreq = _smooth_noise(rng, shape, 120.0 / res)
    patches = _smooth_noise(rng, shape, 30.0 / res)
    fine = _smooth_noise(rng, shape, max(1.0, 4.5 / res))
    frac = p.frac[unit] + p.patch[unit] * patches

    def where(code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        flat = np.flatnonzero(pattern == code)
        rows, cols = np.divmod(flat, w)
        return flat, rows.astype(np.float32), cols.astype(np.float32), unit.ravel()[flat]

    frac_flat = frac.reshape(-1)
    flat, rr, cc, uu = where(_ROWS)
    if flat.size:
        across = rr * p.cos[uu] - cc * p.sin[uu]  # distance across the rows, in pixels
        wave = np.cos(2 * np.pi * across / p.period1[uu] + p.phase1[uu])
        frac_flat[flat] = frac_flat[flat] + p.contrast[uu] * _sinc(p.period1[uu]) * wave
    flat, rr, cc, uu = where(_CROWNS)
    if flat.size:
        u = cc * p.cos[uu] + rr * p.sin[uu]
        v = -cc * p.sin[uu] + rr * p.cos[uu]
        wave = _sinc(p.period1[uu]) * np.cos(2 * np.pi * u / p.period1[uu] + p.phase1[uu]) + _sinc(
            p.period2[uu]
        ) * np.cos(2 * np.pi * v / p.period2[uu] + p.phase2[uu])
        frac_flat[flat] = frac_flat[flat] + p.contrast[uu] * wave
    flat, _, _, uu = where(_CANOPY)
    if flat.size:
        frac_flat[flat] = frac_flat[flat] + 0.35 * fine.reshape(-1)[flat]
    flat, _, _, uu = where(_SPARSE)
    if flat.size:
        frac_flat[flat] = 0.5 + 2.5 * (fine.reshape(-1)[flat] - p.threshold[uu])
    road = pattern == _ROAD
    if road.any():
        dist = ndimage.distance_transform_edt(road).astype(np.float32)
        frac[road] = np.minimum(1.0, 0.45 * dist[road])
    margin = p.margin[unit]
    if (margin > 0).any():
        edge = np.zeros(shape, dtype=bool)
        edge[1:] |= unit[1:] != unit[:-1]
        edge[:-1] |= unit[:-1] != unit[1:]
        edge[:, 1:] |= unit[:, 1:] != unit[:, :-1]
        edge[:, :-1] |= unit[:, :-1] != unit[:, 1:]
        dist = ndimage.distance_transform_edt(~edge).astype(np.float32)
        frac *= np.clip(dist + 1.0 - margin, 0.0, 1.0)
        del edge, dist
    del margin
    np.clip(frac, 0.0, 1.0, out=frac)

    refl = np.empty((4, h, w), dtype=np.float32)
    for band in range(4):
        b = p.b[:, band][unit]
        refl[band] = b + frac * (p.a[:, band][unit] - b)

    flat, rr, cc, uu = where(_URBAN)
    if flat.size:
        spec = _built_spectra(rr * res, cc * res, uu, p, fine.reshape(-1)[flat], rng)
        for band in range(4):
            refl[band].reshape(-1)[flat] = spec[:, band]
    del frac, patches

    brightness = 1.0 + p.lowfreq[unit] * lowfreq
    brightness += p.pixel[unit] * rng.standard_normal(shape, dtype=np.float32)
    del lowfreq
    for band in range(4):
        refl[band] *= brightness
        refl[band] *= 1.0 + 0.015 * rng.standard_normal(shape, dtype=np.float32)
    np.clip(refl, 0.002, 1.2, out=refl)
    return refl


def _add_clouds(
    refl: np.ndarray, inside: np.ndarray, clouds: float, res: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paint clouds and shadows into ``refl`` in place; return (cloud opacity, shadow strength) in 0..1."""
    h, w = inside.shape
    dx, dy = _SUN_OFFSET_M
    dc, dr = int(round(dx / res)), int(round(-dy / res))
    ph, pw = h + abs(dr), w + abs(dc)
    field = _smooth_noise(rng, (ph, pw), 200.0 / res) + 0.45 * _smooth_noise(rng, (ph, pw), 50.0 / res)
    r0, c0 = max(0, -dr), max(0, -dc)  # scene window inside the padded field
    cloud_field = field[r0 : r0 + h, c0 : c0 + w]
    shadow_field = field[r0 + dr : r0 + dr + h, c0 + dc : c0 + dc + w]  # the cloud that shades each pixel
    values = cloud_field[inside] if inside.any() else cloud_field.ravel()
    t_fringe = float(np.quantile(values, 1.0 - clouds))
    width = 0.6

    def opacity(f: np.ndarray) -> np.ndarray:
        x = np.clip((f - t_fringe) / width, 0.0, 1.0)
        out = x * x * (3.0 - 2.0 * x)
        out[f <= t_fringe] = 0.0
        return out.astype(np.float32)

    alpha = opacity(cloud_field)
    beta = opacity(shadow_field)
    darken = np.array([0.45, 0.50, 0.55, 0.60], dtype=np.float32)  # diffuse sky light is bluish
    texture = 1.0 + 0.06 * _smooth_noise(rng, (h, w), 20.0 / res)
    cloud_t = np.clip(0.5 + 0.5 * alpha, 0.0, 1.0)
    for band in range(4):
        ground = refl[band] * (1.0 - darken[band] * beta)
        cloud = (_CLOUD[0][band] + cloud_t * (_CLOUD[1][band] - _CLOUD[0][band])) * texture
        refl[band] = ground * (1.0 - alpha) + cloud * alpha
    return alpha, beta


def _sensor(
    refl: np.ndarray, coefficients: Sequence[float], inside: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Reflectance to uint16 DNs: PSF blur, shot + read noise, rounding; 0 outside the AOI."""
    dn = np.zeros(refl.shape, dtype=np.uint16)
    for band in range(refl.shape[0]):
        x = refl[band] / np.float32(coefficients[band])
        x = ndimage.gaussian_filter(x, 0.6, mode="nearest")
        sigma = np.sqrt(0.8 * np.maximum(x, 0.0) + 144.0)
        x += sigma * rng.standard_normal(x.shape, dtype=np.float32)
        np.rint(x, out=x)
        np.clip(x, 1.0, 65535.0, out=x)
        dn[band] = np.where(inside, x, 0.0).astype(np.uint16)
    return dn


def _udm2(inside: np.ndarray, alpha: np.ndarray | None, beta: np.ndarray | None) -> np.ndarray:
    h, w = inside.shape
    udm = np.zeros((len(UDM2_BANDS), h, w), dtype=np.uint8)
    if alpha is None or beta is None:
        udm[0] = inside
        udm[6] = np.where(inside, 100, 0)
    else:
        cloud = inside & (alpha >= 0.5)
        haze = inside & (alpha > 0.0) & ~cloud
        shadow = inside & (beta >= 0.3) & ~cloud
        udm[0] = inside & ~(cloud | haze | shadow)
        udm[2] = shadow
        udm[3] = haze
        udm[5] = cloud
        conf = 100.0 - 60.0 * (4.0 * alpha * (1.0 - alpha)) - 30.0 * (4.0 * beta * (1.0 - beta))
        udm[6] = np.where(inside, np.clip(np.rint(conf), 0, 100), 0).astype(np.uint8)
    udm[7] = ~inside
    return udm


# -- the public entry points -------------------------------------------------------------------------


def synthesize(
    truth: gpd.GeoDataFrame,
    aoi: gpd.GeoDataFrame,
    *,
    field: str | None = "CLASS1",
    crop_classes: Sequence[str] = DWR_CROP_CLASSES,
    seed: int = 0,
    change_rate: float = 0.1,
    clouds: float = 0.0,
    res: float = 3.0,
    coefficients: tuple[float, float, float, float] = REFERENCE_COEFFICIENTS,
    progress: Callable[[str], None] | None = None,
) -> SynthScene:
    """Render a PlanetScope-like 4-band analytic scene, its UDM2 and its truth from crop polygons.

    Pure: no file I/O. Deterministic for a seed; clouds and change draw from their own random
    streams, so the same seed gives the same ground under any cloud cover.

    Args:
        truth: ground-truth polygons (any CRS); crop polygons are those whose ``field`` value is in
            ``crop_classes`` (every polygon when ``field`` is None). Other polygons with a DWR
            non-crop code (``I``, ``S``, ``U``, ``NR``, ``NW``, ``NV`` ...) are painted as that cover.
        aoi: the area of interest (any CRS); outside it everything is nodata.
        field: class attribute of ``truth``, or None when every polygon is crop.
        crop_classes: values of ``field`` that are crop.
        seed: random seed (non-negative).
        change_rate: share of the crop fields that change between the label year and the image year
            (half lost to idle land or grass, half new fields in non-crop land).
        clouds: share of the AOI under cloud or haze (0: no clouds).
        res: pixel size in metres of the UTM grid.
        coefficients: per-band reflectance coefficients (DN to TOA reflectance) of the product.
        progress: optional callback receiving short progress messages.

    Raises:
        InputError: a fraction outside [0, 1], a bad seed, resolution or coefficients, or an AOI so
            large that the scene would not fit in memory.
        NoOverlapError: the AOI does not overlap the truth polygons.
        LabelError: ``field`` is not an attribute of ``truth``.
    """
    _check_fraction("change_rate", change_rate, "--change-rate")
    _check_fraction("clouds", clouds, "--clouds")
    _check_seed(seed)
    if not (isinstance(res, int | float) and math.isfinite(res) and res > 0):
        raise InputError(f"res must be a positive number of metres, got {res!r}")
    coeffs = tuple(float(c) for c in coefficients)
    if len(coeffs) != 4 or not all(math.isfinite(c) and c > 0 for c in coeffs):
        raise InputError(
            f"coefficients must be 4 positive reflectance coefficients (B, G, R, NIR), got {coefficients!r}"
        )
    if truth.crs is None or aoi.crs is None:
        raise InputError("the truth and the AOI need a CRS; set one, e.g. gdf.set_crs('EPSG:4326')")
    aoi_polys = [
        g for g in aoi.geometry if g is not None and not g.is_empty and g.geom_type in ("Polygon", "MultiPolygon")
    ]
    if not aoi_polys:
        raise InputError("the AOI holds no polygon; give a Polygon or MultiPolygon AOI")
    aoi_ll = gpd.GeoDataFrame(geometry=[shapely.make_valid(shapely.union_all(aoi_polys))], crs=aoi.crs).to_crs(
        "EPSG:4326"
    )
    utm = aoi_ll.estimate_utm_crs()
    aoi_geom = _polygonal(aoi_ll.to_crs(utm).geometry.iloc[0])
    if aoi_geom is None:
        raise InputError("the AOI holds no polygon; give a Polygon or MultiPolygon AOI")
    grid = Grid.from_bounds(aoi_geom.bounds, float(res), utm)
    if grid.width * grid.height > MAX_PIXELS:
        raise InputError(
            f"the AOI makes a {grid.width} x {grid.height} px scene at {res} m, more than {MAX_PIXELS:,} px; "
            "give a smaller AOI or a coarser --res"
        )
    truth_utm = truth[~(truth.geometry.isna() | truth.geometry.is_empty)].to_crs(utm)
    if not truth_utm.geometry.is_valid.all():
        truth_utm = truth_utm.set_geometry(truth_utm.geometry.make_valid())
    if truth_utm.empty or not truth_utm.intersects(aoi_geom).any():
        raise NoOverlapError(
            "the AOI does not overlap the label polygons; check that both cover the same place (and their CRS), "
            "or leave the AOI out to use the labels' extent"
        )
    rng_layout, rng_params, rng_texture, rng_clouds, rng_sensor = _rngs(seed, 5)

    _say(progress, "planning fields and land covers")
    units = _plan_units(truth_utm, aoi_geom, field, crop_classes, seed, change_rate, float(res), rng_layout)
    _say(progress, f"rasterizing {len(units.geoms)} units on a {grid.width} x {grid.height} px grid")
    inside = aoi_mask(aoi_ll, grid)
    labels = rasterize_labels(truth_utm, grid, field=field, crop_classes=crop_classes, aoi=aoi_ll)
    unit = rasterize(
        [(g, i) for i, g in enumerate(units.geoms, start=1)],
        out_shape=grid.shape,
        transform=grid.transform,
        fill=0,
        dtype="int32",
    )
    missing = unit == 0
    if missing.any() and not missing.all():
        idx = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
        unit = unit[idx[0], idx[1]]
    params = _unit_params(units, grid, rng_params)

    lost_units = np.array([False, *(lb and not ac for lb, ac in zip(units.crop_label, units.crop_actual, strict=True))])
    new_units = np.array([False, *(ac and not lb for lb, ac in zip(units.crop_label, units.crop_actual, strict=True))])
    actual = labels.copy()
    actual[lost_units[unit] & inside] = NONCROP
    actual[new_units[unit] & inside] = CROP
    cover = np.where(inside, params.cover[unit], NODATA).astype(np.uint8)

    _say(progress, "rendering reflectance")
    refl = _render(unit, params, float(res), rng_texture)
    del unit
    alpha = beta = None
    if clouds > 0:
        _say(progress, "adding clouds and shadows")
        alpha, beta = _add_clouds(refl, inside, clouds, float(res), rng_clouds)
    _say(progress, "simulating the sensor")
    dn = _sensor(refl, coeffs, inside, rng_sensor)
    del refl
    udm2 = _udm2(inside, alpha, beta)

    fields = gpd.GeoDataFrame(
        {
            "unit": np.arange(1, len(units.geoms) + 1, dtype=np.int32),
            "cover": units.cover,
            "crop_label": units.crop_label,
            "crop_actual": units.crop_actual,
            "changed": units.changed,
            "CLASS1": _object_array(units.class1),
        },
        geometry=units.geoms,
        crs=utm,
    )
    crop_codes = {str(c) for c in crop_classes} if field is not None else set()
    crop_codes |= {str(c) for c, lb in zip(units.class1, units.crop_label, strict=True) if lb and c is not None}
    epsg = utm.to_epsg()
    metadata = SceneMetadata(
        identifier=f"synth_s{seed}_3B_AnalyticMS",
        acquired=ACQUIRED,
        product_type="L3B",
        epsg=epsg,
        rows=grid.height,
        cols=grid.width,
        gsd=float(res),
        reflectance_coefficients=coeffs,
        atmospheric_correction=False,
    )
    _say(progress, "done")
    return SynthScene(
        grid=grid,
        dn=dn,
        udm2=udm2,
        labels=labels,
        actual=actual,
        metadata=metadata,
        fields=fields,
        aoi=aoi_ll,
        cover=cover,
        seed=int(seed),
        change_rate=float(change_rate),
        clouds=float(clouds),
        crop_classes=tuple(sorted(crop_codes)),
    )


def _object_array(values: Sequence[str | None]) -> np.ndarray:
    """An object array (strings and None) for a GeoDataFrame column."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def write_synth(scene: SynthScene, out_dir: str | Path) -> dict[str, Path]:
    """Write a synthetic scene as a cropseg scene folder.

    Files: ``scene.tif`` (uint16 4-band COG, nodata 0), ``scene_metadata.xml`` (Planet product XML),
    ``udm2.tif`` (8 bands), ``labels.tif`` and ``actual.tif`` (uint8, nodata 255), ``cover_labels.tif``
    (uint8 index into :data:`COVERS`, nodata 255), ``fields.gpkg`` (:attr:`SynthScene.fields`),
    ``aoi.geojson``, ``truth.geojson`` (the label-year crop polygons with ``CLASS1``, for
    ``cropseg train --labels``) and ``manifest.json``.

    Returns:
        name -> path of each file written.
    """
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    paths["image"] = write_raster(out / "scene.tif", scene.dn, scene.grid, nodata=0, descriptions=BAND_NAMES)
    meta_path = out / "scene_metadata.xml"
    with atomic_path(meta_path, suffix=".xml") as tmp:
        tmp.write_text(planet_metadata_xml(scene.metadata))
    paths["metadata"] = meta_path
    paths["udm2"] = write_raster(out / "udm2.tif", scene.udm2, scene.grid, nodata=None, descriptions=UDM2_BANDS)
    for name in ("labels", "actual"):
        array = scene.labels if name == "labels" else scene.actual
        paths[name] = write_raster(out / f"{name}.tif", array, scene.grid, nodata=NODATA, descriptions=(name,))
    if scene.cover is not None:
        paths["cover"] = write_raster(
            out / "cover_labels.tif", scene.cover, scene.grid, nodata=NODATA, descriptions=("cover",),
            tags={"COVERS": ",".join(COVERS)},
        )
    paths["fields"] = write_gpkg(scene.fields, out / "fields.gpkg", layer="fields")
    paths["aoi"] = write_geojson(scene.aoi, out / "aoi.geojson")
    truth = scene.fields.loc[scene.fields["crop_label"], ["CLASS1", "geometry"]]
    paths["truth"] = write_geojson(truth, out / "truth.geojson")
    record: dict[str, Any] = {
        "provider": "cropseg-synth",
        "created": now_iso(),
        "image": "scene.tif",
        "metadata": "scene_metadata.xml",
        "udm2": "udm2.tif",
        "product": "analytic",
        "labels": "labels.tif",
        "actual": "actual.tif",
        "cover": "cover_labels.tif" if scene.cover is not None else None,
        "covers": list(COVERS),
        "fields": "fields.gpkg",
        "aoi": "aoi.geojson",
        "truth": "truth.geojson",
        "label_field": "CLASS1",
        "crop_classes": list(scene.crop_classes),
        "seed": scene.seed,
        "change_rate": scene.change_rate,
        "clouds": scene.clouds,
        "res": scene.grid.res[0],
        "crs": scene.grid.crs.to_string(),
        "shape": list(scene.grid.shape),
        "reflectance_coefficients": list(scene.metadata.reflectance_coefficients),
        "acquired": scene.metadata.acquired,
        "software": software_versions(),
        "files": {p.name: {"sha256": file_digest(p)} for p in paths.values()},
    }
    paths["manifest"] = write_manifest(out, record)
    return paths


def run_synth(
    labels: str | Path | None,
    aoi: str | Path | None,
    out_dir: str | Path,
    *,
    field: str | None = "CLASS1",
    crop_classes: Sequence[str] = DWR_CROP_CLASSES,
    seed: int = 0,
    change_rate: float = 0.1,
    clouds: float = 0.0,
    size_m: tuple[float, float] = (3000.0, 3000.0),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Make a synthetic scene folder from label / AOI files, or from a procedural layout.

    Args:
        labels: ground-truth polygons (any vector format cropseg reads); None: a
            :func:`procedural_layout` of ``size_m`` is used.
        aoi: the AOI file; None: the labels' bounding box (or the layout's AOI).
        out_dir: folder to write (see :func:`write_synth`).
        field: class attribute of the labels, or None when every polygon is crop.
        crop_classes: values of ``field`` that are crop.
        seed: random seed.
        change_rate: share of fields changed between label and image year, in [0, 1].
        clouds: share of the AOI under cloud, in [0, 1].
        size_m: (width, height) in metres of the procedural layout.
        progress: optional callback receiving short progress messages.

    Returns:
        name -> path of each file written.
    """
    _check_fraction("change_rate", change_rate, "--change-rate")
    _check_fraction("clouds", clouds, "--clouds")
    _check_seed(seed)
    if labels is None:
        _say(progress, f"procedural layout of {size_m[0]:g} m x {size_m[1]:g} m")
        truth, aoi_gdf = procedural_layout(seed, size_m)
        if aoi is not None:
            aoi_gdf = read_vector(aoi, "AOI")
        field, crop_classes = "CLASS1", DWR_CROP_CLASSES
    else:
        truth = read_vector(labels, "labels")
        if aoi is not None:
            aoi_gdf = read_vector(aoi, "AOI")
        else:
            aoi_gdf = gpd.GeoDataFrame(geometry=[box(*truth.total_bounds)], crs=truth.crs)
    if not truth.to_crs(aoi_gdf.crs).intersects(shapely.union_all(list(aoi_gdf.geometry))).any():
        raise NoOverlapError(
            f"the AOI {aoi} does not overlap the labels {labels}; check that both cover the same place "
            "(and their CRS), or leave the AOI out to use the labels' extent"
        )
    scene = synthesize(
        truth, aoi_gdf, field=field, crop_classes=crop_classes, seed=seed, change_rate=change_rate,
        clouds=clouds, progress=progress,
    )
    _say(progress, f"writing {out_dir}")
    return write_synth(scene, out_dir)

