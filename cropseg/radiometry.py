"""Radiometry and masks: DNs to reflectance, Planet metadata XML, UDM2 usable-data masks.

Pure functions on arrays and text. PlanetScope ``analytic`` products hold TOA radiance DNs;
multiplying each band by its ``reflectanceCoefficient`` from the product XML gives TOA
reflectance. ``analytic_sr`` products hold surface reflectance x 10000; their XML coefficients
belong to the radiance product and must not be applied.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cropseg.errors import InputError, InvalidMetadataError

NS = {
    "ps": "http://schemas.planet.com/ps/v1/planet_product_metadata_geocorrected_level",
    "eop": "http://earth.esa.int/eop",
    "opt": "http://earth.esa.int/opt",
    "gml": "http://www.opengis.net/gml",
}
SR_SCALE = 10_000.0

#: UDM2 band order (1-based band numbers in the file).
UDM2_BANDS: tuple[str, ...] = (
    "clear", "snow", "shadow", "haze_light", "haze_heavy", "cloud", "confidence", "udm1",
)

ResolvedProduct = Literal["analytic", "analytic_sr"]


@dataclass(frozen=True)
class SceneMetadata:
    """What cropseg reads from a Planet ``ps:EarthObservation`` product XML."""

    identifier: str
    acquired: str
    product_type: str
    epsg: int | None
    rows: int | None
    cols: int | None
    gsd: float | None
    reflectance_coefficients: tuple[float, ...]
    atmospheric_correction: bool

    @property
    def product(self) -> ResolvedProduct:
        """``analytic_sr`` when the XML describes a surface-reflectance product, else ``analytic``."""
        if self.atmospheric_correction or "_SR" in self.identifier.upper():
            return "analytic_sr"
        return "analytic"


def _text(root: ET.Element, path: str) -> str | None:
    el = root.find(path, NS)
    return el.text.strip() if el is not None and el.text else None


def parse_planet_metadata(xml_text: str, source: str = "metadata XML") -> SceneMetadata:
    """Parse a Planet product XML (``*_metadata.xml``).

    Raises:
        InvalidMetadataError: not XML, not a ``ps:EarthObservation``, or band coefficients missing.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise InvalidMetadataError(f"{source} is not valid XML: {exc}") from exc
    if root.tag != f"{{{NS['ps']}}}EarthObservation":
        raise InvalidMetadataError(
            f"{source} is not a Planet product XML (root element {root.tag!r}, expected ps:EarthObservation); "
            "give the *_metadata.xml that came with the analytic scene"
        )
    coeffs: dict[int, float] = {}
    for band in root.iter(f"{{{NS['ps']}}}bandSpecificMetadata"):
        number = _text(band, "ps:bandNumber")
        coeff = _text(band, "ps:reflectanceCoefficient")
        if number is not None and coeff is not None:
            try:
                coeffs[int(number)] = float(coeff)
            except ValueError as exc:
                raise InvalidMetadataError(f"{source}: bad reflectanceCoefficient {coeff!r}") from exc
    if not coeffs or sorted(coeffs) != list(range(1, len(coeffs) + 1)):
        raise InvalidMetadataError(
            f"{source} has no complete set of per-band reflectanceCoefficient values (found bands "
            f"{sorted(coeffs)}); give --product analytic_sr for surface-reflectance scenes"
        )

    def _int(path: str) -> int | None:
        t = _text(root, path)
        return int(t) if t is not None else None

    gsd = _text(root, ".//ps:ProductInformation/ps:columnGsd")
    atm = _text(root, ".//ps:ProductInformation/ps:atmosphericCorrectionApplied")
    return SceneMetadata(
        identifier=_text(root, ".//eop:identifier") or "",
        acquired=_text(root, ".//ps:acquisitionDateTime") or "",
        product_type=_text(root, ".//eop:productType") or "",
        epsg=_int(".//ps:spatialReferenceSystem/ps:epsgCode"),
        rows=_int(".//ps:ProductInformation/ps:numRows"),
        cols=_int(".//ps:ProductInformation/ps:numColumns"),
        gsd=float(gsd) if gsd else None,
        reflectance_coefficients=tuple(coeffs[i] for i in sorted(coeffs)),
        atmospheric_correction=(atm or "").lower() == "true",
    )


def planet_metadata_xml(meta: SceneMetadata) -> str:
    """Render a minimal Planet ``ps:EarthObservation`` product XML that :func:`parse_planet_metadata` reads."""
    for prefix, uri in NS.items():
        ET.register_namespace(prefix, uri)
    ps, eop = NS["ps"], NS["eop"]
    root = ET.Element(f"{{{ps}}}EarthObservation", {"version": "1.2.1"})
    md = ET.SubElement(ET.SubElement(root, f"{{{NS['gml']}}}metaDataProperty"), f"{{{ps}}}EarthObservationMetaData")
    ET.SubElement(md, f"{{{eop}}}identifier").text = meta.identifier
    ET.SubElement(md, f"{{{eop}}}productType").text = meta.product_type
    using = ET.SubElement(ET.SubElement(root, f"{{{NS['gml']}}}using"), f"{{{eop}}}EarthObservationEquipment")
    acq = ET.SubElement(ET.SubElement(using, f"{{{eop}}}acquisitionParameters"), f"{{{ps}}}Acquisition")
    ET.SubElement(acq, f"{{{ps}}}acquisitionDateTime").text = meta.acquired
    result = ET.SubElement(ET.SubElement(root, f"{{{NS['gml']}}}resultOf"), f"{{{ps}}}EarthObservationResult")
    info = ET.SubElement(ET.SubElement(result, f"{{{eop}}}product"), f"{{{ps}}}ProductInformation")
    srs = ET.SubElement(info, f"{{{ps}}}spatialReferenceSystem")
    ET.SubElement(srs, f"{{{ps}}}epsgCode").text = str(meta.epsg or "")
    ET.SubElement(info, f"{{{ps}}}numRows").text = str(meta.rows or "")
    ET.SubElement(info, f"{{{ps}}}numColumns").text = str(meta.cols or "")
    ET.SubElement(info, f"{{{ps}}}numBands").text = str(len(meta.reflectance_coefficients))
    ET.SubElement(info, f"{{{ps}}}rowGsd").text = str(meta.gsd or "")
    ET.SubElement(info, f"{{{ps}}}columnGsd").text = str(meta.gsd or "")
    ET.SubElement(info, f"{{{ps}}}atmosphericCorrectionApplied").text = str(meta.atmospheric_correction).lower()
    for i, coeff in enumerate(meta.reflectance_coefficients, start=1):
        band = ET.SubElement(result, f"{{{ps}}}bandSpecificMetadata")
        ET.SubElement(band, f"{{{ps}}}bandNumber").text = str(i)
        ET.SubElement(band, f"{{{ps}}}radiometricScaleFactor").text = "0.01"
        ET.SubElement(band, f"{{{ps}}}reflectanceCoefficient").text = repr(coeff)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_reflectance(
    dn: np.ndarray,
    product: ResolvedProduct,
    coefficients: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Convert DNs (bands, rows, cols) to reflectance as float32.

    Args:
        dn: pixel values as stored in the product.
        product: ``analytic`` (TOA radiance DNs x per-band coefficient) or ``analytic_sr`` (DN / 10000).
        coefficients: per-band reflectance coefficients, required for ``analytic``.
    """
    out = dn.astype(np.float32)
    if product == "analytic_sr":
        out /= np.float32(SR_SCALE)
        return out
    if coefficients is None:
        raise InputError(
            "an analytic (radiance) scene needs its metadata XML for the reflectance coefficients: "
            "pass --metadata, or --product analytic_sr for surface-reflectance scenes"
        )
    if len(coefficients) != dn.shape[0]:
        raise InvalidMetadataError(
            f"the metadata XML has {len(coefficients)} reflectance coefficients but the image has "
            f"{dn.shape[0]} bands; give the XML that belongs to this scene"
        )
    out *= np.asarray(coefficients, dtype=np.float32)[:, None, None]
    return out


def udm2_usable(udm2: np.ndarray, mask_haze: bool = True) -> np.ndarray:
    """Boolean (rows, cols): True where a UDM2 (8, rows, cols) says the pixel is usable.

    Usable means clear, and no snow, shadow, heavy haze or cloud, no unusable-data (udm1) flag,
    and, with ``mask_haze``, no light haze.
    """
    if udm2.ndim != 3 or udm2.shape[0] != len(UDM2_BANDS):
        raise InputError(
            f"a UDM2 has {len(UDM2_BANDS)} bands ({', '.join(UDM2_BANDS)}); got an array of shape {udm2.shape}. "
            "Give the *_udm2.tif of the scene"
        )
    clear, snow, shadow, haze_light, haze_heavy, cloud, _conf, udm1 = udm2
    usable = (clear == 1) & (snow == 0) & (shadow == 0) & (haze_heavy == 0) & (cloud == 0) & (udm1 == 0)
    if mask_haze:
        usable &= haze_light == 0
    return np.asarray(usable)
