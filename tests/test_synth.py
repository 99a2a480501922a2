"""Tests of the synthetic scene generator (cropseg.synth)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import rowcol
from shapely.geometry import MultiPolygon, box

from cropseg import synth
from cropseg.errors import InputError, LabelError, NoOverlapError
from cropseg.label import NODATA
from cropseg.radiometry import UDM2_BANDS, parse_planet_metadata
from cropseg.vector_io import read_vector

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "planet_sacramento_dwr2015"
X0, Y0 = 650_000.0, 4_240_020.0  # EPSG:32610, near the reference test AOI


@pytest.fixture(scope="module")
def tiny_layout() -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    return synth.procedural_layout(seed=3, size_m=(600.0, 450.0))


@pytest.fixture(scope="module")
def tiny_scene(tiny_layout: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]) -> synth.SynthScene:
    truth, aoi = tiny_layout
    return synth.synthesize(truth, aoi, seed=3)


@pytest.fixture(scope="module")
def demo_scene() -> synth.SynthScene:
    truth, aoi = synth.procedural_layout(seed=1, size_m=(1500.0, 1200.0))
    return synth.synthesize(truth, aoi, seed=1, change_rate=0.0)


def _utm_frame(geoms: list[object], codes: list[str]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"CLASS1": codes}, geometry=geoms, crs="EPSG:32610").to_crs("EPSG:4326")


def _aoi(x0: float, y0: float, x1: float, y1: float) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs="EPSG:32610").to_crs("EPSG:4326")


def _pixel(scene: synth.SynthScene, x: float, y: float) -> tuple[int, int]:
    row, col = rowcol(scene.grid.transform, x, y)
    return int(row), int(col)


# -- layout -----------------------------------------------------------------------------------------


def test_procedural_layout_is_dwr_like(tiny_layout: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]) -> None:
    truth, aoi = tiny_layout
    assert truth.crs.to_epsg() == 4326 and aoi.crs.to_epsg() == 4326
    assert len(aoi) == 1 and aoi.geometry.iloc[0].geom_type == "Polygon"
    assert len(truth) >= 3
    assert set(truth["CLASS1"]) <= set("GRFPTDCV")
    assert aoi.geometry.iloc[0].contains(truth.union_all().centroid) or truth.intersects(aoi.geometry.iloc[0]).all()


def test_procedural_layout_has_holes_and_multipolygons() -> None:
    truth, _ = synth.procedural_layout(seed=0, size_m=(3000.0, 3000.0))
    assert (truth.geom_type == "MultiPolygon").any()
    assert any(len(g.interiors) for g in truth.geometry if g.geom_type == "Polygon")


def test_procedural_layout_deterministic() -> None:
    a, _ = synth.procedural_layout(seed=5, size_m=(800.0, 600.0))
    b, _ = synth.procedural_layout(seed=5, size_m=(800.0, 600.0))
    c, _ = synth.procedural_layout(seed=6, size_m=(800.0, 600.0))
    assert a.geometry.geom_equals(b.geometry).all() and list(a["CLASS1"]) == list(b["CLASS1"])
    assert len(a) != len(c) or not a.geometry.geom_equals(c.geometry).all()


# -- synthesize -------------------------------------------------------------------------------------


def test_determinism(tiny_layout: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame], tiny_scene: synth.SynthScene) -> None:
    truth, aoi = tiny_layout
    again = synth.synthesize(truth, aoi, seed=3)
    for name in ("dn", "udm2", "labels", "actual", "cover"):
        assert np.array_equal(getattr(again, name), getattr(tiny_scene, name)), name
    assert list(again.fields["cover"]) == list(tiny_scene.fields["cover"])
    other = synth.synthesize(truth, aoi, seed=4)
    assert not np.array_equal(other.dn, tiny_scene.dn)


def test_output_layout(tiny_scene: synth.SynthScene) -> None:
    s = tiny_scene
    rows, cols = s.grid.shape
    assert s.grid.res == (3.0, 3.0)
    assert s.grid.crs.to_epsg() == 32610  # UTM 10N for the default origin
    assert 140 <= rows <= 170 and 190 <= cols <= 220
    assert s.dn.shape == (4, rows, cols) and s.dn.dtype == np.uint16
    assert s.udm2.shape == (len(UDM2_BANDS), rows, cols) and s.udm2.dtype == np.uint8
    assert s.labels.shape == s.actual.shape == (rows, cols) and s.labels.dtype == s.actual.dtype == np.uint8
    assert s.cover is not None and s.cover.shape == (rows, cols)
    outside = s.labels == NODATA
    assert outside.any() and not outside.all()  # the lon/lat AOI is slightly rotated on the UTM grid
    assert np.array_equal(outside, s.actual == NODATA) and np.array_equal(outside, s.cover == 255)
    assert (s.dn[:, outside] == 0).all() and (s.dn[:, ~outside] > 0).all()
    assert set(np.unique(s.labels[~outside])) == {0, 1}
    assert (s.udm2[0][outside] == 0).all() and (s.udm2[7][outside] == 1).all()
    assert (s.udm2[0][~outside] == 1).all() and (s.udm2[7][~outside] == 0).all()  # no clouds by default
    assert s.metadata.reflectance_coefficients == synth.REFERENCE_COEFFICIENTS
    assert s.metadata.product == "analytic"
    assert {"cover", "crop_label", "crop_actual", "changed", "CLASS1"} <= set(s.fields.columns)
    assert s.fields.crs.equals(s.grid.crs) and s.aoi.crs.to_epsg() == 4326
    assert set(s.fields["cover"]) <= set(synth.COVERS)
    refl = s.reflectance()[:, ~outside]
    assert 0.01 < refl.mean() < 0.4 and refl.max() < 1.0


def test_labels_honour_holes_and_multipolygons() -> None:
    field = box(X0 + 60, Y0 + 60, X0 + 540, Y0 + 540).difference(box(X0 + 240, Y0 + 240, X0 + 360, Y0 + 360))
    multi = MultiPolygon([box(X0 + 600, Y0 + 60, X0 + 700, Y0 + 200), box(X0 + 600, Y0 + 300, X0 + 700, Y0 + 500)])
    truth = _utm_frame([field, multi], ["F", "V"])
    scene = synth.synthesize(truth, _aoi(X0, Y0, X0 + 750, Y0 + 600), seed=0, change_rate=0.0)
    assert scene.grid.crs.to_epsg() == 32610
    assert scene.labels[_pixel(scene, X0 + 300, Y0 + 300)] == 0  # the hole
    assert scene.labels[_pixel(scene, X0 + 150, Y0 + 300)] == 1  # the ring around it
    assert scene.labels[_pixel(scene, X0 + 650, Y0 + 100)] == 1  # both parts of the MultiPolygon
    assert scene.labels[_pixel(scene, X0 + 650, Y0 + 400)] == 1
    assert scene.labels[_pixel(scene, X0 + 650, Y0 + 250)] == 0  # between them
    assert scene.labels[_pixel(scene, X0 + 20, Y0 + 20)] == 0
    assert scene.cover is not None
    assert synth.COVERS[scene.cover[_pixel(scene, X0 + 300, Y0 + 300)]] not in ("vineyard", "green_crop")


def test_field_none_and_unknown_codes() -> None:
    geoms = [box(X0 + 30 + 120 * i, Y0 + 30, X0 + 130 + 120 * i, Y0 + 250) for i in range(4)]
    truth = _utm_frame(geoms, ["corn", "corn", "wheat", "U"])
    aoi = _aoi(X0, Y0, X0 + 520, Y0 + 300)
    everything = synth.synthesize(truth, aoi, field=None, seed=0, change_rate=0.0)
    assert everything.labels[_pixel(everything, X0 + 80 + 360, Y0 + 100)] == 1
    assert everything.fields.loc[everything.fields["crop_label"], "CLASS1"].notna().all()
    custom = synth.synthesize(truth, aoi, crop_classes=("corn", "wheat"), seed=0, change_rate=0.0)
    assert custom.labels[_pixel(custom, X0 + 80, Y0 + 100)] == 1
    urban = custom.labels[_pixel(custom, X0 + 80 + 360, Y0 + 100)]
    assert urban == 0
    assert custom.cover is not None and synth.COVERS[custom.cover[_pixel(custom, X0 + 440, Y0 + 100)]] == "urban"
    with pytest.raises(LabelError):
        synth.synthesize(truth, aoi, field="CROP_TYPE")


def test_change_rate_zero_keeps_labels(demo_scene: synth.SynthScene) -> None:
    assert np.array_equal(demo_scene.labels, demo_scene.actual)
    assert not demo_scene.fields["changed"].any()


def test_change_rate_half_changes_both_ways() -> None:
    truth, aoi = synth.procedural_layout(seed=1, size_m=(1500.0, 1200.0))
    scene = synth.synthesize(truth, aoi, seed=1, change_rate=0.5)
    inside = scene.labels != NODATA
    lost = (scene.labels == 1) & (scene.actual == 0)
    new = (scene.labels == 0) & (scene.actual == 1)
    assert lost.sum() > 0.03 * inside.sum() and new.sum() > 0.01 * inside.sum()
    f = scene.fields
    assert (f["crop_label"] & ~f["crop_actual"] & f["changed"]).any()
    assert (~f["crop_label"] & f["crop_actual"] & f["changed"]).any()
    n_crop = int(f["crop_label"].sum())
    assert 0.3 * n_crop <= int(f["changed"].sum()) <= 0.6 * n_crop


def test_clouds(tiny_layout: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame], tiny_scene: synth.SynthScene) -> None:
    truth, aoi = tiny_layout
    cloudy = synth.synthesize(truth, aoi, seed=3, clouds=0.3)
    inside = cloudy.labels != NODATA
    clear, _snow, shadow, haze, _heavy, cloud, confidence, udm1 = cloudy.udm2
    flagged = ((cloud == 1) | (haze == 1))[inside].mean()
    assert 0.15 <= flagged <= 0.45
    assert (cloud == 1).any() and (shadow == 1)[inside].any()
    assert not (clear.astype(bool) & (cloud.astype(bool) | haze.astype(bool) | shadow.astype(bool))).any()
    assert (clear[inside] == 1).mean() < 0.85
    assert (udm1[inside] == 0).all() and (udm1[~inside] == 1).all() and confidence.max() <= 100
    assert np.array_equal(cloudy.labels, tiny_scene.labels) and np.array_equal(cloudy.actual, tiny_scene.actual)
    dn = cloudy.dn.astype(float).sum(axis=0)
    assert dn[(cloud == 1) & inside].mean() > 1.5 * dn[(clear == 1) & inside].mean()
    assert dn[(shadow == 1) & inside].mean() < dn[(clear == 1) & inside].mean()


def test_spectral_sanity(demo_scene: synth.SynthScene) -> None:
    refl = demo_scene.reflectance()
    cover = demo_scene.cover
    assert cover is not None

    def pixels(name: str) -> np.ndarray:
        mask = cover == synth.COVERS.index(name)
        assert mask.sum() > 200, f"no {name} in the demo scene"
        return refl[:, mask]

    def ndvi(r: np.ndarray) -> float:
        return float(((r[3] - r[2]) / (r[3] + r[2])).mean())

    green, grass, water = pixels("green_crop"), pixels("dry_grass"), pixels("water")
    assert ndvi(green) > ndvi(grass) + 0.3
    assert water[3].mean() < 0.5 * min(green[3].mean(), grass[3].mean())
    assert water[3].mean() < 0.06
    # dry grass and harvested grain / fallow share the same spectra: brightness alone cannot separate crops
    inside = demo_scene.labels != NODATA
    crop_b = refl[:, inside & (demo_scene.actual == 1)].sum(axis=0)
    non_b = refl[:, inside & (demo_scene.actual == 0)].sum(axis=0)
    assert abs(np.median(crop_b) - np.median(non_b)) < 0.5 * np.std(non_b)


def test_bad_input(tiny_layout: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame], tmp_path: Path) -> None:
    truth, aoi = tiny_layout
    with pytest.raises(InputError, match="change_rate"):
        synth.synthesize(truth, aoi, change_rate=1.5)
    with pytest.raises(InputError, match="clouds"):
        synth.synthesize(truth, aoi, clouds=-0.1)
    with pytest.raises(InputError, match="change_rate"):
        synth.run_synth(None, None, tmp_path / "x", change_rate=1.5)
    with pytest.raises(InputError, match="clouds"):
        synth.run_synth(None, None, tmp_path / "x", clouds=-0.1)
    far = _aoi(X0 + 50_000, Y0, X0 + 50_600, Y0 + 400)
    with pytest.raises(NoOverlapError):
        synth.synthesize(truth, far)
    labels_path, aoi_path = tmp_path / "truth.geojson", tmp_path / "far.geojson"
    truth.to_file(labels_path, driver="GeoJSON")
    far.to_file(aoi_path, driver="GeoJSON")
    with pytest.raises(NoOverlapError):
        synth.run_synth(labels_path, aoi_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_synth(tiny_scene: synth.SynthScene, tmp_path: Path) -> None:
    paths = synth.write_synth(tiny_scene, tmp_path / "scene")
    for key in ("image", "metadata", "udm2", "labels", "actual", "fields", "aoi", "truth", "manifest"):
        assert paths[key].is_file(), key
    with rasterio.open(paths["image"]) as ds:
        assert ds.count == 4 and ds.dtypes[0] == "uint16" and ds.nodata == 0
        assert ds.descriptions == ("blue", "green", "red", "nir")
        assert ds.crs.to_epsg() == 32610 and ds.profile.get("tiled")
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert np.array_equal(ds.read(), tiny_scene.dn)
    with rasterio.open(paths["udm2"]) as ds:
        assert ds.count == 8 and ds.descriptions == UDM2_BANDS and ds.dtypes[0] == "uint8"
    for key in ("labels", "actual"):
        with rasterio.open(paths[key]) as ds:
            assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.nodata == 255
            assert np.array_equal(ds.read(1), getattr(tiny_scene, key))
    meta = parse_planet_metadata(paths["metadata"].read_text())
    assert meta.reflectance_coefficients == pytest.approx(synth.REFERENCE_COEFFICIENTS, rel=1e-12)
    assert meta.product == "analytic" and meta.rows == tiny_scene.grid.height
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["provider"] == "cropseg-synth"
    expected = {"image": "scene.tif", "metadata": "scene_metadata.xml", "udm2": "udm2.tif", "product": "analytic",
                "labels": "labels.tif", "actual": "actual.tif", "seed": 3, "change_rate": 0.1, "clouds": 0.0}
    assert {k: manifest[k] for k in expected} == expected
    assert "numpy" in manifest["software"]
    fields = gpd.read_file(paths["fields"])
    assert len(fields) == len(tiny_scene.fields)
    truth = read_vector(paths["truth"])
    assert len(truth) == int(tiny_scene.fields["crop_label"].sum()) and truth["CLASS1"].notna().all()
    assert read_vector(paths["aoi"]).crs.to_epsg() == 4326


def test_run_synth_files_and_procedural(
    tiny_layout: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame], tmp_path: Path
) -> None:
    truth, _aoi_gdf = tiny_layout
    labels_path = tmp_path / "truth.gpkg"
    truth.to_file(labels_path, driver="GPKG")
    messages: list[str] = []
    paths = synth.run_synth(labels_path, None, tmp_path / "from_files", seed=2, progress=messages.append)
    assert messages and paths["image"].is_file()
    with rasterio.open(paths["labels"]) as ds:
        labels = ds.read(1)
    assert (labels == 1).any() and (labels == 0).any()
    paths = synth.run_synth(None, None, tmp_path / "procedural", size_m=(450.0, 300.0), seed=1)
    assert json.loads(paths["manifest"].read_text())["seed"] == 1


# -- the real DWR polygons --------------------------------------------------------------------------


@pytest.mark.shared
def test_dwr_scenes_are_honest_not_trivial() -> None:
    if not (SHARED / "ground-truth-test.geojson").is_file():
        pytest.skip(f"the DWR reference data is not at {SHARED}")
    from sklearn.metrics import f1_score
    from sklearn.neighbors import KNeighborsClassifier

    scenes = {}
    for i, name in enumerate(("test", "train")):
        truth = read_vector(SHARED / f"ground-truth-{name}.geojson")
        aoi = read_vector(SHARED / f"aoi-{name}.geojson")
        scenes[name] = synth.synthesize(truth, aoi, seed=i)
    test_scene = scenes["test"]
    assert test_scene.grid.shape == pytest.approx((2154, 2280), abs=3)
    inside = test_scene.labels != NODATA
    assert (test_scene.labels[inside] == 1).mean() == pytest.approx(0.547, abs=0.03)

    rng = np.random.default_rng(0)

    def sample(scene: synth.SynthScene, truth: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.choice(np.flatnonzero(truth.ravel() != NODATA), n, replace=False)
        coeffs = np.asarray(scene.metadata.reflectance_coefficients)
        return scene.dn.reshape(4, -1)[:, idx].T * coeffs, truth.ravel()[idx]

    x_train, y_train = sample(test_scene, test_scene.labels, 20_000)
    x_eval, y_eval = sample(scenes["train"], scenes["train"].actual, 20_000)
    pred = KNeighborsClassifier(n_neighbors=15).fit(x_train, y_train).predict(x_eval)
    weighted = f1_score(y_eval, pred, average="weighted")
    assert 0.65 <= weighted <= 0.92, weighted
