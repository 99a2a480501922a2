"""The one configuration object.

:class:`Config` is a frozen dataclass tree with every tunable of the pipeline and its default.
It loads from TOML (``Config.from_toml``), rejects unknown keys and carries a ``version``. Only
the high-level pipeline functions and the CLI read it; the stage functions take explicit
keyword arguments.

Example TOML::

    version = 1
    [labels]
    field = "CLASS1"
    crop_classes = ["G", "R", "F", "P", "T", "D", "C", "V"]
    [features]
    preset = "texture"
    [train]
    model = "lgbm"
    k_values = [3, 5, 7, 9, 11, 15, 21, 31]
    [predict]
    refine = "auto"
    [polygonize]
    median_size = 5
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from cropseg.errors import ConfigError, InputFileNotFoundError

CONFIG_VERSION = 1

#: DWR land-use survey CLASS1 codes that the reference analysis calls crop.
DWR_CROP_CLASSES: tuple[str, ...] = ("G", "R", "F", "P", "T", "D", "C", "V")

Product = Literal["auto", "analytic", "analytic_sr"]


@dataclass(frozen=True)
class LabelConfig:
    """How ground-truth polygons become crop / non-crop pixels."""

    field: str = "CLASS1"
    crop_classes: tuple[str, ...] = DWR_CROP_CLASSES


@dataclass(frozen=True)
class RadiometryConfig:
    """How DNs become reflectance and which UDM2 flags remove pixels."""

    product: Product = "auto"
    mask_haze: bool = True


@dataclass(frozen=True)
class FeaturesConfig:
    """Which per-pixel features a model uses (see :mod:`cropseg.features`).

    ``preset`` ``auto`` takes the model kind's own set: ``reference`` (4 reflectance bands) for knn,
    ``texture`` (bands, indices, multi-scale mean / std, row texture) for rf, lgbm and unet (the network
    learns its own context, but not the faint rows of harvested fields: BENCHMARKS.md). Non-empty ``indices``,
    ``context``, ``scales``, ``texture`` (periods in px) and ``texture_windows`` (px), and a non-zero
    ``texture_stride`` (px between the pixels of a texture window; 4 in the preset) and ``texture_orientations``
    (directions of the Gabor filters; 12 in the preset), and a non-empty ``texture_base`` (the image they
    see: ``brightness`` in the preset, or ``red+nir``) replace the preset's.
    """

    preset: str = "auto"
    indices: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    scales: tuple[int, ...] = ()
    texture: tuple[float, ...] = ()
    texture_windows: tuple[int, ...] = ()
    texture_stride: int = 0
    texture_orientations: int = 0
    texture_base: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """Model training: the model kind, cross-validation, threshold, re-weighting, per-kind settings.

    ``sample_size`` labelled pixels train the KNN, ``tree_sample_size`` the rf and lgbm; the U-Net
    trains on every labelled pixel. ``threshold`` says how the decision threshold is chosen on
    blocked out-of-fold predictions: ``f1_macro`` (mean of the crop and non-crop F1: it weighs the
    minority class as much as the majority and does not follow the training area's class
    balance), ``f1_weighted``, or ``none`` (0.5). ``reweight`` ``rgd`` applies RGD with clip
    ``rgd_clip`` (lgbm and unet only).

    Defaults were chosen by measurement (BENCHMARKS.md, "Accuracy"): ``lgbm`` is the default model
    (more accurate than the KNN reference on held-out areas and many times faster); its ensemble is
    kept small (at most ``lgbm_rounds`` = 40 boosting rounds) because on a held-out area with out-of-date
    labels, 20 to 40 rounds scored higher than 80 to 300 (longer boosting fits the label noise and the
    training area), and a small ensemble predicts faster. The U-Net trains for ``unet_steps`` = 1500
    batches (about 2 minutes on 2 CPU cores): 300 underfits, 4000 overfits the training area.
    """

    k_values: tuple[int, ...] = (3, 5, 7, 9, 11, 15, 21, 31)
    cv_folds: int = 3
    cv_block: int = 64
    sample_size: int = 20_000
    seed: int = 0
    model: str = "lgbm"
    reweight: str = "none"
    rgd_clip: float = 1.0
    threshold: str = "f1_macro"
    tree_sample_size: int = 60_000
    lgbm_leaves: tuple[int, ...] = (15, 31)
    lgbm_rounds: int = 40
    rf_trees: int = 40
    rf_leaf_values: tuple[int, ...] = (10, 50)
    rf_max_depth: int = 14
    unet_widths: tuple[int, ...] = (24, 48, 64)
    unet_steps: int = 1500
    unet_batch: int = 8
    unet_patch: int = 128
    unet_lr: float = 3e-3
    unet_block: int = 256
    device: str = "auto"


@dataclass(frozen=True)
class PredictConfig:
    """Tiled prediction.

    ``refine`` smooths the crop probabilities within the fields the image shows, with a guided
    filter of radius ``refine_radius`` px and regulariser ``refine_eps`` (see :mod:`cropseg.refine`):
    ``on``, ``off``, or ``auto`` (on for the random forest and LightGBM, where it was measured to help;
    off for the KNN, the reference's method, and the U-Net, where it did not). With ``refine_step``
    4, a per-pixel model classifies every fourth pixel of each row and column only and the filter
    fills in the others from the image (a sixteenth of the classification work; on the held-out
    benchmark data the same accuracy as steps 1 and 2); 1 classifies every pixel.
    The radius and eps were chosen on procedural scenes (benchmarks/refinement.py), not on the
    benchmark data; step 4 gives up 0.002 weighted F1 there against step 2 for a quarter of its work
    (BENCHMARKS.md, "Refinement settings").
    """

    tile_size: int = 512
    refine: str = "auto"
    refine_radius: int = 8
    refine_eps: float = 3e-5
    refine_step: int = 4

    def __post_init__(self) -> None:
        if self.refine not in ("auto", "on", "off"):
            raise ConfigError(f"predict.refine must be auto, on or off, got {self.refine!r}")
        if self.tile_size < 1:
            raise ConfigError(f"predict.tile_size must be positive, got {self.tile_size}")
        if not 1 <= self.refine_step <= self.refine_radius:
            raise ConfigError(f"predict.refine_step must be between 1 and refine_radius ({self.refine_radius}), "
                              f"got {self.refine_step}; set refine_step to at most the radius")


@dataclass(frozen=True)
class PolygonizeConfig:
    """Crop mask to field polygons."""

    median_size: int = 5
    simplify: float = 3.0
    min_area: float = 2500.0


@dataclass(frozen=True)
class Config:
    """Every tunable of the cropseg pipeline."""

    version: int = CONFIG_VERSION
    labels: LabelConfig = field(default_factory=LabelConfig)
    radiometry: RadiometryConfig = field(default_factory=RadiometryConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    polygonize: PolygonizeConfig = field(default_factory=PolygonizeConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a config from nested dicts, rejecting unknown keys and wrong versions."""
        version = data.get("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(
                f"config version {version!r} is not supported; this cropseg reads version {CONFIG_VERSION}"
            )
        built: Config = _build(cls, data, "")
        return built

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        """Load a TOML config file."""
        path = Path(path)
        if not path.is_file():
            raise InputFileNotFoundError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **sections: Any) -> Config:
        """A copy with some sections replaced, e.g. ``cfg.replace(train=TrainConfig(seed=1))``."""
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON / TOML serialisable)."""
        return dataclasses.asdict(self)


def _build(cls: Any, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or 'root'!r} must be a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known keys here: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{prefix}{name}.")
        elif isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"config key {prefix}{name} must be a list, got {value!r}")
            kwargs[name] = tuple(value)
        else:
            if default is not None and not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int)
            ):
                raise ConfigError(
                    f"config key {prefix}{name} must be {type(default).__name__}, got {value!r}"
                )
            kwargs[name] = value
    return cls(**kwargs)
