"""A scene on disk: the image, its metadata XML and UDM2, found and read as reflectance.

:func:`open_scene` resolves which files make up a scene (explicit paths, the folder's
``manifest.json``, or Planet's and cropseg's file naming), decides how DNs become reflectance,
and checks that the pieces fit together. :class:`Scene` then reads any window as reflectance
plus a validity mask, which is all that training and prediction need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cropseg import raster_io
from cropseg.errors import InputError, InputFileNotFoundError, InvalidRasterError
from cropseg.grid import Grid, Window
from cropseg.manifest import read_manifest
from cropseg.radiometry import (
    UDM2_BANDS,
    ResolvedProduct,
    parse_planet_metadata,
    to_reflectance,
    udm2_usable,
)

ProductChoice = Literal["auto", "analytic", "analytic_sr"]
_UDM2_HINTS = ("udm2",)
_NOT_IMAGES = ("udm", "labels", "actual", "mask", "pred", "prediction")


@dataclass(frozen=True)
class Scene:
    """An image with everything needed to read it as reflectance and mask unusable pixels."""

    image: Path
    info: raster_io.RasterInfo
    product: ResolvedProduct
    coefficients: tuple[float, ...] | None
    metadata: Path | None = None
    udm2: Path | None = None
    mask_haze: bool = True

    @property
    def grid(self) -> Grid:
        """The image grid."""
        return self.info.grid

    @property
    def band_count(self) -> int:
        """Number of image bands."""
        return self.info.count

    def read_reflectance(self, window: Window | None = None, boundless: bool = False) -> np.ndarray:
        """Reflectance, float32 (bands, rows, cols)."""
        dn = raster_io.read(self.image, window, boundless=boundless)
        return to_reflectance(dn, self.product, self.coefficients)

    def read_valid(self, window: Window | None = None, boundless: bool = False) -> np.ndarray:
        """Boolean (rows, cols): image has data and (with a UDM2) the pixel is usable."""
        valid = raster_io.read_valid(self.image, window, boundless=boundless)
        if self.udm2 is not None:
            udm = raster_io.read(self.udm2, window, boundless=boundless)
            valid &= udm2_usable(udm, self.mask_haze)
        return valid


def _pick(candidates: list[Path], what: str, folder: Path, flag: str) -> Path | None:
    if not candidates:
        return None
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise InputError(f"{folder} holds several {what} files ({names}); name the one to use with {flag}")
    return candidates[0]


def _from_manifest(folder: Path, key: str) -> Path | None:
    manifest = read_manifest(folder)
    value = manifest.get(key) if manifest else None
    if isinstance(value, str):
        path = folder / value
        if not path.exists():
            raise InputFileNotFoundError(f"{folder}/manifest.json names {key} {value}, which does not exist")
        return path
    return None


def find_scene_files(image: str | Path) -> tuple[Path, Path | None, Path | None]:
    """Resolve (image, metadata XML, UDM2) from an image file or a scene folder.

    A folder is read through its ``manifest.json`` (keys ``image``, ``metadata``, ``udm2``) or, without
    one, by file names: Planet's ``*AnalyticMS*.tif`` / ``*_metadata*.xml`` / ``*udm2*.tif`` and
    cropseg's ``scene.tif`` / ``scene_metadata.xml`` / ``udm2.tif``. Beside an image file, a metadata XML
    and a UDM2 are picked up only when exactly one of each is there.
    """
    path = Path(image)
    if not path.exists():
        raise InputFileNotFoundError(f"image {path} does not exist; check the path")
    if path.is_dir():
        folder = path
        img = _from_manifest(folder, "image") or _pick(
            sorted(
                p for p in folder.glob("*.tif")
                if not any(h in p.name.lower() for h in _NOT_IMAGES)
            ),
            "image", folder, "--image FILE",
        )
        if img is None:
            raise InputFileNotFoundError(f"{folder} holds no image (*.tif); give --image FILE")
    else:
        folder, img = path.parent, path
    xml = _from_manifest(folder, "metadata") or _pick(
        sorted(p for p in folder.glob("*.xml") if "metadata" in p.name.lower() and "udm" not in p.name.lower()),
        "metadata XML", folder, "--metadata",
    )
    udm = _from_manifest(folder, "udm2") or _pick(
        sorted(p for p in folder.glob("*.tif") if any(h in p.name.lower() for h in _UDM2_HINTS)),
        "UDM2", folder, "--udm2",
    )
    return img, xml, udm


def open_scene(
    image: str | Path,
    metadata: str | Path | None = None,
    udm2: str | Path | None = None,
    product: ProductChoice = "auto",
    mask_haze: bool = True,
    discover: bool = True,
) -> Scene:
    """Open a scene and check that its parts fit.

    Args:
        image: the image GeoTIFF, or a folder holding one scene.
        metadata: Planet product XML; found beside the image when not given and ``discover`` is on.
        udm2: UDM2 usable-data mask; found beside the image when not given and ``discover`` is on.
        product: ``analytic`` (DN x XML coefficient), ``analytic_sr`` (DN / 10000) or ``auto``: the
            folder's manifest (written by ``cropseg order`` / ``fetch``), else ``_SR`` in the file name,
            else the XML (``atmosphericCorrectionApplied``).
        mask_haze: also drop light-haze pixels.
        discover: look for metadata and UDM2 beside the image.
    """
    img_path, found_xml, found_udm = find_scene_files(image) if discover else (Path(image), None, None)
    xml_path = Path(metadata) if metadata is not None else found_xml
    udm_path = Path(udm2) if udm2 is not None else found_udm
    info = raster_io.read_info(img_path, "image")
    if not np.issubdtype(np.dtype(info.dtype), np.number):
        raise InvalidRasterError(f"image {img_path} has non-numeric pixels ({info.dtype})")

    coefficients: tuple[float, ...] | None = None
    meta_product: ResolvedProduct | None = None
    if xml_path is not None:
        if not xml_path.exists():
            raise InputFileNotFoundError(f"metadata XML {xml_path} does not exist; check the path")
        meta = parse_planet_metadata(xml_path.read_text(errors="replace"), str(xml_path))
        coefficients, meta_product = meta.reflectance_coefficients, meta.product
    resolved: ResolvedProduct
    manifest = read_manifest(img_path.parent)
    from_manifest = manifest.get("product") if manifest else None
    if product != "auto":
        resolved = product
    elif from_manifest in ("analytic", "analytic_sr"):
        # the acquisition record knows the bundle; Planet's SR bundles ship the radiance product's XML
        resolved = from_manifest
    elif "_sr" in img_path.name.lower():
        resolved = "analytic_sr"
    elif meta_product is not None:
        resolved = meta_product
    else:
        raise InputError(
            f"cannot tell whether {img_path} holds radiance or surface reflectance: give its metadata XML "
            "with --metadata, or --product analytic_sr (DN / 10000) or --product analytic"
        )
    if resolved == "analytic" and coefficients is None:
        raise InputError(
            f"{img_path} is an analytic (radiance) scene: its metadata XML with the reflectance coefficients is "
            "needed; pass --metadata FILE"
        )
    if resolved == "analytic" and coefficients is not None and len(coefficients) != info.count:
        raise InputError(
            f"metadata XML {xml_path} has {len(coefficients)} band coefficients but image {img_path} has "
            f"{info.count} bands; give the XML of this scene"
        )

    if udm_path is not None:
        udm_info = raster_io.read_info(udm_path, "UDM2")
        if udm_info.count != len(UDM2_BANDS):
            raise InvalidRasterError(
                f"UDM2 {udm_path} has {udm_info.count} bands, a UDM2 has {len(UDM2_BANDS)}; "
                "give the scene's *_udm2.tif (the 1-band UDM1 is not supported)"
            )
        if not udm_info.grid.same_as(info.grid):
            raise InvalidRasterError(
                f"UDM2 {udm_path} is not on the grid of image {img_path}; give the UDM2 of the same scene and clip"
            )
    return Scene(
        image=img_path,
        info=info,
        product=resolved,
        coefficients=coefficients if resolved == "analytic" else None,
        metadata=xml_path,
        udm2=udm_path,
        mask_haze=mask_haze,
    )
