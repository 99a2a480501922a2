import numpy as np
import pytest
import rasterio

from cropseg.errors import InputError, InvalidMetadataError
from cropseg.radiometry import (
    SceneMetadata,
    parse_planet_metadata,
    planet_metadata_xml,
    to_reflectance,
    udm2_usable,
)
from tests.conftest import shared_path


def test_reference_xml_coefficients():
    xml = shared_path("planet_sacramento_dwr2015", "train_scene_cropped_metadata.xml")
    meta = parse_planet_metadata(xml.read_text())
    assert meta.identifier == "20160831_180231_0e0e_3B_AnalyticMS"
    assert meta.epsg == 32610 and meta.rows == 4868 and meta.cols == 9182 and meta.gsd == 3.0
    assert meta.reflectance_coefficients == pytest.approx(
        (2.2272053411087134e-05, 2.3286941101653296e-05, 2.617770294902722e-05, 3.857934042956696e-05), rel=1e-12
    )
    assert meta.product == "analytic"


def test_real_udm2_sample_xml():
    xml = shared_path("planetscope_udm2_sample", "20151119_025740_0c74_3B_AnalyticMS_metadata_clip.xml")
    meta = parse_planet_metadata(xml.read_text())
    assert meta.epsg == 32646 and (meta.rows, meta.cols) == (1352, 1578)
    assert meta.reflectance_coefficients[3] == pytest.approx(4.433218315124758e-05)


def test_real_udm2_mask():
    path = shared_path("planetscope_udm2_sample", "20151119_025740_0c74_3B_udm2_clip.tif")
    with rasterio.open(path) as ds:
        udm = ds.read()
        assert ds.descriptions == ("clear", "snow", "shadow", "haze_light", "haze_heavy", "cloud", "confidence", "udm1")
    usable = udm2_usable(udm)
    assert int((udm[0] == 1).sum()) == 2084145  # PROVENANCE.md
    expected = (udm[0] == 1) & (udm[3] == 0) & (udm[7] == 0)  # the sample has no snow/shadow/heavy haze/cloud
    assert (usable == expected).all()
    assert int(usable.sum()) == 2084145  # in this product, hazy and udm1-flagged pixels are never "clear"
    assert not usable[udm[3] == 1].any() and not usable[udm[7] != 0].any()


def test_xml_round_trip():
    meta = SceneMetadata("x_3B_AnalyticMS", "2016-08-31T00:00:00+00:00", "L3B", 32610, 10, 20, 3.0,
                         (1e-5, 2e-5, 3e-5, 4e-5), False)
    assert parse_planet_metadata(planet_metadata_xml(meta)) == meta


@pytest.mark.parametrize("text", ["not xml", "<a/>", planet_metadata_xml(
    SceneMetadata("x", "", "", None, None, None, None, (), False))])
def test_bad_xml(text):
    with pytest.raises(InvalidMetadataError):
        parse_planet_metadata(text)


def test_to_reflectance():
    dn = np.full((4, 2, 2), 10000, dtype=np.uint16)
    refl = to_reflectance(dn, "analytic", (1e-5, 2e-5, 3e-5, 4e-5))
    assert refl.dtype == np.float32
    assert refl[:, 0, 0] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert to_reflectance(dn, "analytic_sr")[0, 0, 0] == pytest.approx(1.0)
    with pytest.raises(InputError, match="--metadata"):
        to_reflectance(dn, "analytic")
    with pytest.raises(InvalidMetadataError):
        to_reflectance(dn, "analytic", (1e-5,))


def test_udm2_flags():
    udm = np.zeros((8, 1, 7), dtype=np.uint8)
    udm[0] = 1
    for band, col in ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 6)):
        udm[band, 0, col] = 1
    assert udm2_usable(udm)[0].tolist() == [True] + [False] * 6
    assert udm2_usable(udm, mask_haze=False)[0].tolist() == [True, False, False, True, False, False, False]
    with pytest.raises(InputError, match="8 bands"):
        udm2_usable(udm[:4])
