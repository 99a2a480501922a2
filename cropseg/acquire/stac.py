"""Sentinel-2 L2A from any STAC API, no account needed: search, pick a day, load, mask, write.

:func:`fetch_stac` searches a STAC API with pystac-client, reads Blue, Green, Red, NIR and the
scene classification layer (SCL) over the AOI with odc-stac (HTTP range reads of the COGs), and
writes what ``cropseg train`` / ``cropseg predict`` read directly:

* ``scene.tif``: uint16 B, G, R, NIR surface reflectance x 10000, COG, nodata 0, on a
  ``resolution`` grid in the items' UTM zone, cropped to the AOI's bounds; pixels outside the
  AOI polygon are nodata.
* ``udm2.tif``: the 8-band UDM2 layout of :data:`cropseg.radiometry.UDM2_BANDS`, from the SCL
  (see :func:`scl_to_udm2`).
* ``manifest.json``: ``"image": "scene.tif"``, ``"udm2": "udm2.tif"``, ``"product": "analytic_sr"``
  plus provider, items, assets, offsets, AOI, dates, filters, digests and software versions.

Which scene: the candidates are grouped by solar day (items of one day, e.g. two tiles, are
mosaicked); the day whose SCL shows the largest clear share of the AOI wins, ties going to the
lower ``eo:cloud_cover``, then the later date. No multi-date composite is made: one real
acquisition keeps the radiometry of a training scene consistent.

Processing baseline 04.00 (January 2022, and the Collection-1 reprocessing of older scenes)
adds ``BOA_ADD_OFFSET`` = +1000 to every L2A DN. :func:`boa_offset` decides per item whether to
remove it: 0 if the provider says it already did (``earthsearch:boa_offset_applied: true``),
1000 if ``s2:processing_baseline`` (or ``processing:version``) is 04.00 or later, else what
the asset's ``raster:bands`` offset/scale say, else 0. Provider metadata is known to be wrong at
times (Element84/earth-search#66, #71); ``boa_offset=`` overrides the guess. After removal, DNs
of 0 or below (reflectance <= 0) become 1 so that they stay valid data.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from cropseg.acquire._common import (
    Aoi,
    ProgressCallback,
    RetryPolicy,
    StatusCallback,
    acquire_versions,
    digests,
    iso,
    load_aoi,
    need,
    parse_date_range,
    public_url,
    same_request,
    short,
)
from cropseg.errors import CropSegError, InputError, NoOverlapError, OutputError
from cropseg.grid import Grid
from cropseg.manifest import now_iso, read_manifest, write_manifest
from cropseg.radiometry import UDM2_BANDS
from cropseg.raster_io import write_raster

#: Element84's public Earth Search STAC API (Sentinel-2 L2A COGs on AWS, no account).
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
DEFAULT_COLLECTION = "sentinel-2-l2a"
#: Asset keys tried for each band, in order (Earth Search, Planetary Computer / CDSE naming).
BAND_ASSETS: dict[str, tuple[str, ...]] = {
    "blue": ("blue", "B02", "B02_10m", "b02"),
    "green": ("green", "B03", "B03_10m", "b03"),
    "red": ("red", "B04", "B04_10m", "b04"),
    "nir": ("nir", "B08", "B08_10m", "b08"),
    "scl": ("scl", "SCL", "SCL_20m"),
}
SPECTRAL = ("blue", "green", "red", "nir")
#: SCL classes -> UDM2 flags. 4 vegetation, 5 bare soil, 6 water, 7 unclassified are clear; 2 dark /
#: topographic shadow and 3 cloud shadow are shadow; 8, 9 cloud and 10 thin cirrus are cloud; 11 snow.
SCL_CLEAR = frozenset({4, 5, 6, 7})
SCL_SHADOW = frozenset({2, 3})
SCL_CLOUD = frozenset({8, 9, 10})
SCL_SNOW = frozenset({11})
#: 0 no data, 1 saturated or defective: flagged in the UDM2's ``udm1`` band.
SCL_UNUSABLE = frozenset({0, 1})
BOA_ADD_OFFSET = 1000
IMAGE_NAME = "scene.tif"
UDM2_NAME = "udm2.tif"
_MAX_PIXELS = 100_000_000

__all__ = [
    "BAND_ASSETS",
    "DEFAULT_COLLECTION",
    "EARTH_SEARCH_URL",
    "StacCandidate",
    "StacFetchResult",
    "StacSearch",
    "boa_offset",
    "fetch_stac",
    "scl_to_udm2",
    "search_stac",
]


@dataclass(frozen=True)
class StacCandidate:
    """One STAC item over the AOI.

    Attributes:
        id: item id.
        datetime: acquisition time (ISO 8601).
        cloud_cover: ``eo:cloud_cover`` in percent (tile-wide), if given.
        coverage: share (0..1) of the AOI's area inside the item's footprint.
        processing_baseline: ``s2:processing_baseline`` (or ``processing:version``), if given.
        boa_offset: the DN offset that will be removed (see :func:`boa_offset`).
        item: the ``pystac.Item``.
    """

    id: str
    datetime: str
    cloud_cover: float | None
    coverage: float
    processing_baseline: str | None
    boa_offset: int
    item: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class StacSearch:
    """The result of :func:`search_stac`: candidates, best first, and the query that found them."""

    candidates: tuple[StacCandidate, ...]
    url: str
    collection: str
    parameters: dict[str, Any]

    def to_geojson(self) -> dict[str, Any]:
        """The candidate items as a FeatureCollection, best first, with ``cropseg:*`` properties."""
        features = []
        for rank, c in enumerate(self.candidates, start=1):
            feat = dict(c.item.to_dict())
            feat["properties"] = {
                **feat.get("properties", {}), "cropseg:rank": rank, "cropseg:coverage": c.coverage,
                "cropseg:boa_offset": c.boa_offset,
            }
            features.append(feat)
        return {"type": "FeatureCollection", "features": features}


@dataclass(frozen=True)
class StacFetchResult:
    """What :func:`fetch_stac` left on disk.

    Attributes:
        folder: the output folder, readable by ``cropseg.scene.open_scene``.
        image: ``scene.tif``.
        udm2: ``udm2.tif``.
        item_ids: the items mosaicked into the scene (one solar day).
        datetime: acquisition time of the first of them.
        clear_fraction: share of the AOI that is clear in the written scene.
        skipped: True when a previous run had already written this same request.
    """

    folder: Path
    image: Path
    udm2: Path
    item_ids: tuple[str, ...]
    datetime: str
    clear_fraction: float
    skipped: bool


def boa_offset(item: Any, asset_key: str | None = None) -> int:
    """The ``BOA_ADD_OFFSET`` (DN) to subtract from an item's L2A bands; see the module docstring."""
    props = item.properties
    applied = props.get("earthsearch:boa_offset_applied", props.get("sentinel:boa_offset_applied"))
    if applied is True:
        return 0
    baseline = _baseline(props)
    if baseline is not None:
        try:
            return BOA_ADD_OFFSET if float(baseline) >= 4.0 else 0
        except ValueError:
            pass
    asset = item.assets.get(asset_key) if asset_key else None
    bands = asset.extra_fields.get("raster:bands") if asset is not None else None
    if isinstance(bands, list) and bands and isinstance(bands[0], dict):
        offset, scale = bands[0].get("offset"), bands[0].get("scale")
        if isinstance(offset, int | float) and isinstance(scale, int | float) and scale and offset < 0:
            return int(round(-offset / scale))
    return 0


def _baseline(props: dict[str, Any]) -> str | None:
    for key in ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline"):
        value = props.get(key)
        if value is not None:
            text = str(value)
            return re.sub(r"^[Nn]0?(\d)(\d\d)$", r"\1.\2", text)  # N0400 -> 4.00
    return None


def scl_to_udm2(scl: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """An 8-band UDM2 (uint8, bands of :data:`UDM2_BANDS`) from a Sentinel-2 SCL array (rows, cols).

    ``clear`` = SCL 4, 5, 6, 7; ``snow`` = 11; ``shadow`` = 2, 3; ``cloud`` = 8, 9, 10; no haze
    flags and ``confidence`` 0 (the SCL has neither); ``udm1`` = 1 where SCL is 0 or 1 or where
    ``valid`` (image has data, inside the AOI) is False, and no other flag is set there.
    """
    scl = np.asarray(scl)
    unusable = np.isin(scl, list(SCL_UNUSABLE))
    if valid is not None:
        unusable |= ~valid
    out = np.zeros((len(UDM2_BANDS),) + scl.shape, dtype=np.uint8)
    index = {name: i for i, name in enumerate(UDM2_BANDS)}
    out[index["clear"]] = np.isin(scl, list(SCL_CLEAR))
    out[index["snow"]] = np.isin(scl, list(SCL_SNOW))
    out[index["shadow"]] = np.isin(scl, list(SCL_SHADOW))
    out[index["cloud"]] = np.isin(scl, list(SCL_CLOUD))
    out[:, unusable] = 0
    out[index["udm1"]] = unusable
    return out


# --------------------------------------------------------------------------------------------- search


def _client(url: str, retry: RetryPolicy, timeout: float) -> Any:
    pc = need("pystac_client")
    from urllib3.util.retry import Retry

    policy = Retry(
        total=retry.max_retries, backoff_factor=retry.backoff, backoff_max=retry.max_backoff,
        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None, raise_on_status=False,
    )
    io = pc.stac_api_io.StacApiIO(max_retries=policy, timeout=timeout)
    try:
        return pc.Client.open(url, stac_io=io, timeout=timeout)
    except Exception as exc:  # pystac-client raises APIError, requests' errors or JSON errors
        raise CropSegError(f"cannot open the STAC API at {public_url(url)}: {short(str(exc))}") from None


def _candidate(item: Any, aoi: Aoi) -> StacCandidate:
    props = item.properties
    cloud = props.get("eo:cloud_cover")
    return StacCandidate(
        id=str(item.id),
        datetime=iso(item.datetime) if item.datetime else str(props.get("start_datetime", "")),
        cloud_cover=float(cloud) if isinstance(cloud, int | float) else None,
        coverage=aoi.coverage(item.geometry),
        processing_baseline=_baseline(props),
        boa_offset=boa_offset(item, _asset_key(item, "red", required=False)),
        item=item,
    )


def _search(
    aoi: Aoi, start: str, end: str, url: str, collection: str, max_cloud: float, max_items: int,
    retry: RetryPolicy, timeout: float,
) -> StacSearch:
    if not 0.0 <= max_cloud <= 100.0:
        raise InputError(f"--max-cloud {max_cloud:g} is not a percentage between 0 and 100 (eo:cloud_cover)")
    if max_items < 1:
        raise InputError(f"--max-items must be at least 1, got {max_items}")
    begin, stop = parse_date_range(start, end)
    window = [iso(begin), iso(stop - timedelta(seconds=1))]
    client = _client(url, retry, timeout)
    parameters = {
        "collections": [collection], "intersects": aoi.geojson, "datetime": "/".join(window),
        "query": {"eo:cloud_cover": {"lte": max_cloud}}, "max_items": max_items,
    }
    try:
        search = client.search(
            collections=[collection], intersects=aoi.geojson, datetime=window,
            query={"eo:cloud_cover": {"lte": max_cloud}}, max_items=max_items, limit=min(max_items, 100),
        )
        items = list(search.items())
    except Exception as exc:  # pystac-client's APIError, requests' errors
        raise CropSegError(
            f"the STAC search at {public_url(url)} failed: {short(str(exc))}; check --url and --collection"
        ) from None
    found = []
    for item in items:
        cloud = item.properties.get("eo:cloud_cover")
        if isinstance(cloud, int | float) and cloud > max_cloud:
            continue  # the API may ignore the query extension
        found.append(_candidate(item, aoi))
    newest = sorted(found, key=lambda c: c.datetime, reverse=True)
    ranked = sorted(newest, key=lambda c: (-round(c.coverage, 6), c.cloud_cover if c.cloud_cover is not None else 100))
    return StacSearch(candidates=tuple(ranked), url=public_url(url), collection=collection, parameters=parameters)


def search_stac(
    aoi: str | Path | Aoi,
    start: str,
    end: str,
    *,
    url: str = EARTH_SEARCH_URL,
    collection: str = DEFAULT_COLLECTION,
    max_cloud: float = 10.0,
    max_items: int = 100,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
) -> StacSearch:
    """Search a STAC API for items over an AOI, best candidates first (AOI coverage, then cloud cover).

    Args:
        aoi: AOI file (any vector format) or a loaded :class:`Aoi`.
        start: first day, ``YYYY-MM-DD``.
        end: last day, inclusive when a bare date.
        url: STAC API root.
        collection: collection id.
        max_cloud: highest ``eo:cloud_cover``, percent.
        max_items: stop after this many items.
        retry: retries of 429 / 5xx.
        timeout: seconds per request.

    Raises:
        InputError: bad arguments.
        CropSegError: the API cannot be reached or refuses the search.
    """
    area = aoi if isinstance(aoi, Aoi) else load_aoi(aoi)
    return _search(area, start, end, url, collection, max_cloud, max_items, retry or RetryPolicy(), timeout)


# --------------------------------------------------------------------------------------------- fetch


def _asset_key(item: Any, band: str, required: bool = True) -> str | None:
    for key in BAND_ASSETS[band]:
        if key in item.assets:
            return key
    if required:
        raise InputError(
            f"STAC item {item.id} has no {band} asset (looked for {', '.join(BAND_ASSETS[band])}); "
            "give a Sentinel-2 L2A collection"
        )
    return None


def _item_crs(item: Any) -> str | None:
    props = item.properties
    code = props.get("proj:code")
    if isinstance(code, str) and code:
        return code
    epsg = props.get("proj:epsg")
    return f"EPSG:{int(epsg)}" if isinstance(epsg, int | float) else None


def _solar_day(c: StacCandidate) -> str:
    when = c.item.datetime or datetime.fromisoformat(c.datetime.replace("Z", "+00:00"))
    bbox = c.item.bbox or [0.0, 0.0, 0.0, 0.0]
    lon = (bbox[0] + bbox[2]) / 2.0
    return (when.astimezone(UTC) + timedelta(hours=lon / 15.0)).date().isoformat()


class _Reader:
    """Reads bands of STAC items onto a grid through odc-stac, with GDAL's HTTP retries."""

    def __init__(self, retry: RetryPolicy, timeout: float) -> None:
        self.odc = need("odc.stac")
        self.geobox_cls = need("odc.geo.geobox").GeoBox
        self.env = {
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "GDAL_HTTP_MAX_RETRY": str(retry.max_retries),
            "GDAL_HTTP_RETRY_DELAY": str(max(retry.backoff, 0.0)),
            "GDAL_HTTP_TIMEOUT": str(int(math.ceil(timeout))),
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
        }

    def read(self, item: Any, bands: Sequence[str], grid: Grid) -> dict[str, np.ndarray]:
        import rasterio

        keys = {band: _asset_key(item, band) for band in bands}
        geobox = self.geobox_cls((grid.height, grid.width), grid.transform, grid.crs.to_wkt())
        try:
            with rasterio.Env(**self.env):
                ds = self.odc.load(
                    [item], bands=list(keys.values()), geobox=geobox, resampling="nearest", chunks=None,
                    groupby="id", fail_on_error=True,
                )
        except Exception as exc:  # rasterio / GDAL / odc errors while reading remote COGs
            raise CropSegError(
                f"cannot read the assets of STAC item {item.id} ({type(exc).__name__}: {short(str(exc), 200)}); "
                "re-run later, or check that the asset URLs are reachable"
            ) from None
        return {band: np.asarray(ds[key].values[0]) for band, key in keys.items()}


def _target_crs(candidates: Sequence[StacCandidate], aoi: Aoi) -> str:
    codes = Counter(c for c in (_item_crs(x.item) for x in candidates) if c)
    if codes:
        return codes.most_common(1)[0][0]
    return str(aoi.frame.estimate_utm_crs().to_string())


def _aoi_grid(aoi: Aoi, crs: str, resolution: float) -> Grid:
    bounds = tuple(aoi.frame.to_crs(crs).total_bounds)
    grid = Grid.from_bounds((bounds[0], bounds[1], bounds[2], bounds[3]), resolution, crs)
    if grid.width * grid.height > _MAX_PIXELS:
        raise InputError(
            f"the AOI spans {grid.width} x {grid.height} pixels at {resolution:g} m; split it into parts of at "
            f"most {_MAX_PIXELS // 1_000_000} Mpx"
        )
    return grid


def _aoi_mask(aoi: Aoi, grid: Grid) -> np.ndarray:
    from cropseg.label import aoi_mask

    try:
        return aoi_mask(aoi.frame, grid)
    except NoOverlapError:
        return np.zeros(grid.shape, dtype=bool)


def _pick_day(
    candidates: list[StacCandidate], aoi: Aoi, crs: str, resolution: float, reader: _Reader,
    status: StatusCallback, progress: ProgressCallback | None,
) -> tuple[list[StacCandidate], float, dict[str, float]]:
    """The items of the solar day with the largest clear share of the AOI (SCL at 20 m)."""
    days: dict[str, list[StacCandidate]] = {}
    for c in candidates:
        days.setdefault(_solar_day(c), []).append(c)
    if len(days) == 1:
        return next(iter(days.values())), math.nan, {}
    grid = _aoi_grid(aoi, crs, max(resolution, 20.0))
    inside = _aoi_mask(aoi, grid)
    n_inside = max(int(inside.sum()), 1)
    per_item: dict[str, float] = {}
    scores = []
    for k, c in enumerate(candidates, start=1):
        status(f"checking clouds in {c.id}")
        if progress is not None:
            progress("checking clouds", k - 1, len(candidates))
        scl = reader.read(c.item, ["scl"], grid)["scl"]
        per_item[c.id] = float((np.isin(scl, list(SCL_CLEAR)) & inside).sum()) / n_inside
    if progress is not None:
        progress("checking clouds", len(candidates), len(candidates))
    for day, members in days.items():
        # Clear share of the day's mosaic, bounded by the sum of its items' shares.
        clear = min(1.0, sum(per_item[m.id] for m in members))
        cloud = min((m.cloud_cover for m in members if m.cloud_cover is not None), default=100.0)
        scores.append((clear, -cloud, day))
    scores.sort(reverse=True)
    best_day = scores[0][2]
    members = sorted(days[best_day], key=lambda m: -per_item[m.id])
    return members, scores[0][0], per_item


def _mosaic(
    members: list[StacCandidate], grid: Grid, reader: _Reader, offset_override: int | None,
    status: StatusCallback, progress: ProgressCallback | None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(uint16 DN (4, rows, cols) with offsets removed, SCL (rows, cols), offsets used) of one day."""
    dn = np.zeros((len(SPECTRAL),) + grid.shape, dtype=np.uint16)
    scl = np.zeros(grid.shape, dtype=np.uint8)
    rank = np.zeros(grid.shape, dtype=np.uint8)  # 0 no data yet, 1 data, 2 clear data
    offsets = []
    for k, c in enumerate(members, start=1):
        status(f"reading {c.id}")
        if progress is not None:
            progress("reading Sentinel-2", k - 1, len(members))
        bands = reader.read(c.item, [*SPECTRAL, "scl"], grid)
        offset = c.boa_offset if offset_override is None else offset_override
        offsets.append(offset)
        raw = np.stack([bands[b] for b in SPECTRAL]).astype(np.int32)
        has = (raw > 0).all(axis=0)
        item_scl = bands["scl"].astype(np.uint8)
        item_rank = np.where(has, np.where(np.isin(item_scl, list(SCL_CLEAR)), 2, 1), 0).astype(np.uint8)
        take = item_rank > rank
        fixed = np.clip(raw - offset, 1, 65535).astype(np.uint16)
        dn[:, take] = fixed[:, take]
        scl[take] = item_scl[take]
        rank[take] = item_rank[take]
    if progress is not None:
        progress("reading Sentinel-2", len(members), len(members))
    return dn, scl, offsets


def _already_done(out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    manifest = read_manifest(out)
    if not manifest or manifest.get("provider") != "stac" or not manifest.get("complete"):
        return None
    if not same_request(manifest.get("request"), request):
        return None
    for entry in manifest.get("files") or []:
        path = out / str(entry.get("path"))
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return None
    return manifest


def fetch_stac(
    aoi: str | Path | Aoi,
    out: str | Path,
    start: str,
    end: str,
    *,
    url: str = EARTH_SEARCH_URL,
    collection: str = DEFAULT_COLLECTION,
    max_cloud: float = 10.0,
    max_items: int = 50,
    resolution: float = 10.0,
    boa_offset_override: int | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    status: StatusCallback | None = None,
    progress: ProgressCallback | None = None,
) -> StacFetchResult:
    """Fetch one analysis-ready Sentinel-2 L2A scene over an AOI (see the module docstring).

    Args:
        aoi: AOI file (any vector format) or a loaded :class:`Aoi`.
        out: output folder (``scene.tif``, ``udm2.tif``, ``manifest.json``).
        start: first day, ``YYYY-MM-DD``.
        end: last day, inclusive when a bare date.
        url: STAC API root.
        collection: a Sentinel-2 L2A collection.
        max_cloud: highest tile-wide ``eo:cloud_cover``, percent.
        max_items: consider at most this many items.
        resolution: output pixel size, metres (10 = the native size of B, G, R, NIR).
        boa_offset_override: DN offset to remove from every item instead of the per-item guess.
        retry: retries of 429 / 5xx, for the search and for GDAL's range reads.
        timeout: seconds per request.
        status: receives one-line status messages.
        progress: receives ``(description, done, total)``.

    Raises:
        InputError: bad arguments, or no usable item.
        CropSegError: the API or the assets cannot be read.
        OutputError: the output cannot be written.
    """
    area = aoi if isinstance(aoi, Aoi) else load_aoi(aoi)
    out = Path(out)
    say = status or (lambda _msg: None)
    retry = retry or RetryPolicy()
    if resolution <= 0:
        raise InputError(f"--resolution must be positive, got {resolution:g}")
    begin, stop = parse_date_range(start, end)
    request = {
        "url": public_url(url), "collection": collection, "aoi": area.geojson, "start": iso(begin),
        "end": iso(stop), "max_cloud": max_cloud, "max_items": max_items, "resolution": resolution,
        "boa_offset": boa_offset_override,
    }
    done = _already_done(out, request)
    if done is not None:
        return StacFetchResult(
            folder=out, image=out / IMAGE_NAME, udm2=out / UDM2_NAME,
            item_ids=tuple(str(i["id"]) for i in done.get("items") or []),
            datetime=str(done.get("acquired")), clear_fraction=float(done.get("clear_fraction", math.nan)),
            skipped=True,
        )

    say(f"searching {collection} at {public_url(url)}")
    found = _search(area, start, end, url, collection, max_cloud, max_items, retry, timeout)
    candidates = [c for c in found.candidates if c.coverage > 0]
    if not candidates:
        raise InputError(
            f"no {collection} item over the AOI between {iso(begin)} and {iso(stop)} with eo:cloud_cover <= "
            f"{max_cloud:g}; widen the dates or raise --max-cloud"
        )
    reader = _Reader(retry, timeout)
    crs = _target_crs(candidates, area)
    members, _, per_item = _pick_day(candidates, area, crs, resolution, reader, say, progress)
    grid = _aoi_grid(area, crs, resolution)
    dn, scl, offsets = _mosaic(members, grid, reader, boa_offset_override, say, progress)
    inside = _aoi_mask(area, grid)
    valid = inside & (dn > 0).all(axis=0)
    dn[:, ~valid] = 0
    udm2 = scl_to_udm2(scl, valid)
    clear_fraction = float(udm2[0][inside].mean()) if inside.any() else 0.0
    if not valid.any():
        raise InputError(f"items {', '.join(m.id for m in members)} hold no data inside the AOI")

    ids = [m.id for m in members]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc}") from exc
    (out / "manifest.json").unlink(missing_ok=True)  # the manifest is written last: its presence means complete
    tags = {"STAC_ITEMS": ",".join(ids), "COLLECTION": collection, "BOA_OFFSET_REMOVED": ",".join(map(str, offsets))}
    write_raster(out / IMAGE_NAME, dn, grid, nodata=0, descriptions=SPECTRAL, tags=tags)
    write_raster(out / UDM2_NAME, udm2, grid, nodata=None, descriptions=UDM2_BANDS, tags={"SOURCE": "SCL"})
    files = []
    for name in (IMAGE_NAME, UDM2_NAME):
        md5, sha = digests(out / name)
        files.append({"path": name, "size": (out / name).stat().st_size, "md5": md5, "sha256": sha})
    items = []
    for m, offset in zip(members, offsets, strict=True):
        assets = {band: _asset_key(m.item, band) for band in (*SPECTRAL, "scl")}
        items.append({
            "id": m.id, "datetime": m.datetime, "eo:cloud_cover": m.cloud_cover, "aoi_coverage": m.coverage,
            "aoi_clear_share": per_item.get(m.id), "processing_baseline": m.processing_baseline,
            "boa_offset_removed": offset, "assets": {band: {"key": key, "href": m.item.assets[key].href}
                                                     for band, key in assets.items() if key},
        })
    write_manifest(out, {
        "created": now_iso(), "provider": "stac", "complete": True, "request": request,
        "url": public_url(url), "collection": collection, "product": "analytic_sr",
        "image": IMAGE_NAME, "udm2": UDM2_NAME, "acquired": members[0].datetime, "items": items,
        "candidates": [{"id": c.id, "datetime": c.datetime, "eo:cloud_cover": c.cloud_cover} for c in candidates],
        "selection": "solar day with the largest clear (SCL 4-7) share of the AOI; one day, no composite",
        "scl_to_udm2": {
            "clear": sorted(SCL_CLEAR), "shadow": sorted(SCL_SHADOW), "cloud": sorted(SCL_CLOUD),
            "snow": sorted(SCL_SNOW), "udm1": sorted(SCL_UNUSABLE),
        },
        "clear_fraction": clear_fraction, "aoi": area.geojson, "aoi_source": area.source,
        "date_range": {"start": iso(begin), "end": iso(stop), "end_exclusive": True},
        "search_filters": {"eo:cloud_cover_max": max_cloud, "max_items": max_items},
        "grid": {"crs": grid.crs.to_string(), "resolution": resolution, "width": grid.width, "height": grid.height},
        "bands": list(SPECTRAL), "scale": "reflectance x 10000, nodata 0", "files": files,
        "software": acquire_versions(),
    })
    return StacFetchResult(
        folder=out, image=out / IMAGE_NAME, udm2=out / UDM2_NAME, item_ids=tuple(ids),
        datetime=members[0].datetime, clear_fraction=clear_fraction, skipped=False,
    )
