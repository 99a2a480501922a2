"""A fake Planet service: Data API quick search (paged) and item lookup, Orders API, downloads.

Enough of Planet's API for the real ``planet`` SDK (``base_url`` pointed here) and cropseg's
downloader: ``/compute/ops/bundles/spec``, ``/data/v1/quick-search`` with ``_links._next`` paging,
``/data/v1/item-types/<type>/items/<id>``, ``/compute/ops/orders/v2`` (create; each GET moves the
state queued -> running -> success), result locations with tokens, and an order manifest with md5
and sha256 digests. Faults: status queues per path (429, 5xx), a download cut mid-file, a corrupted
download, an order that fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.io import MemoryFile
from shapely.geometry import box, mapping, shape

from cropseg.radiometry import UDM2_BANDS, SceneMetadata, planet_metadata_xml
from tests.fakes.http import FakeServer, Request, Response, bytes_response, error_response, json_response

BUNDLES: dict[str, list[str]] = {
    "analytic_sr_udm2": ["ortho_analytic_4b_sr", "ortho_analytic_4b_xml", "ortho_udm2"],
    "analytic_udm2": ["ortho_analytic_4b", "ortho_analytic_4b_xml", "ortho_udm2"],
}
COEFFICIENTS = (2.0e-5, 2.2e-5, 2.5e-5, 4.0e-5)
CRS = "EPSG:32610"


def _projector(transformer: Transformer) -> Any:
    """A ``shapely.transform`` callback projecting (n, 2) coordinates with a pyproj transformer."""
    return lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))


@dataclass
class FakeScene:
    """One PlanetScope item: its Data API feature and the bytes of every asset."""

    item_id: str
    feature: dict[str, Any]
    assets: dict[str, tuple[str, bytes, str]]  # asset type -> (unclipped file name, content, media type)
    transform: Affine
    shape: tuple[int, int]


def _tif(array: np.ndarray, transform: Affine, nodata: float | None, descriptions: tuple[str, ...]) -> bytes:
    count, rows, cols = array.shape
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff", width=cols, height=rows, count=count, dtype=str(array.dtype), crs=CRS,
            transform=transform, nodata=nodata, compress="deflate",
        ) as ds:
            ds.write(array)
            for i, d in enumerate(descriptions, start=1):
                ds.set_band_description(i, d)
        return bytes(mem.read())


def make_scene(
    item_id: str,
    acquired: str,
    origin: tuple[float, float],
    *,
    size: int = 96,
    res: float = 3.0,
    cloud_cover: float = 0.0,
    clear_percent: float | None = None,
    cloud_box: tuple[int, int, int, int] | None = None,
    seed: int = 0,
) -> FakeScene:
    """A PlanetScope-like scene in EPSG:32610: crop-like pixels (high NIR) in the left half, the rest not.

    ``origin`` is the upper-left corner (x, y); ``cloud_box`` (row0, row1, col0, col1) is flagged cloud in the UDM2.
    """
    rng = np.random.default_rng(seed)
    transform = Affine(res, 0, origin[0], 0, -res, origin[1])
    rows = cols = size
    refl = np.empty((4, rows, cols), dtype=np.float32)
    crop = np.zeros((rows, cols), dtype=bool)
    crop[:, : cols // 2] = True
    for band, (c_val, n_val) in enumerate([(0.04, 0.08), (0.07, 0.10), (0.05, 0.14), (0.42, 0.20)]):
        refl[band] = np.where(crop, c_val, n_val) + rng.normal(0, 0.01, (rows, cols))
    refl = np.clip(refl, 0.001, 1.0)
    sr = np.round(refl * 10000).astype(np.uint16)
    radiance = np.round(refl / np.asarray(COEFFICIENTS, dtype=np.float32)[:, None, None]).astype(np.uint16)
    udm = np.zeros((8, rows, cols), dtype=np.uint8)
    udm[0] = 1
    udm[6] = 90
    if cloud_box is not None:
        r0, r1, c0, c1 = cloud_box
        udm[0, r0:r1, c0:c1] = 0
        udm[5, r0:r1, c0:c1] = 1
    bands = ("blue", "green", "red", "nir")
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    left, top = origin
    right, bottom = left + cols * res, top - rows * res
    footprint = shapely.transform(box(left, bottom, right, top), _projector(to_wgs84))
    props: dict[str, Any] = {
        "acquired": acquired, "cloud_cover": cloud_cover, "item_type": "PSScene", "gsd": res,
        "pixel_resolution": res, "satellite_id": "24a3", "instrument": "PSB.SD", "published": acquired,
        "quality_category": "standard",
    }
    if clear_percent is not None:
        props["clear_percent"] = clear_percent
    feature = {
        "type": "Feature", "id": item_id, "geometry": json.loads(json.dumps(mapping(footprint))),
        "properties": props,
        "_links": {}, "assets": [], "_permissions": [],
    }
    xml = planet_metadata_xml(SceneMetadata(
        identifier=f"{item_id}_3B_AnalyticMS", acquired=acquired, product_type="L3B", epsg=32610, rows=rows,
        cols=cols, gsd=res, reflectance_coefficients=COEFFICIENTS, atmospheric_correction=False,
    ))
    assets = {
        "ortho_analytic_4b_sr": (f"{item_id}_3B_AnalyticMS_SR.tif", _tif(sr, transform, 0, bands), "image/tiff"),
        "ortho_analytic_4b": (f"{item_id}_3B_AnalyticMS.tif", _tif(radiance, transform, 0, bands), "image/tiff"),
        "ortho_analytic_4b_xml": (f"{item_id}_3B_AnalyticMS_metadata.xml", xml.encode(), "text/xml"),
        "ortho_udm2": (f"{item_id}_3B_udm2.tif", _tif(udm, transform, None, UDM2_BANDS), "image/tiff"),
    }
    return FakeScene(item_id, feature, assets, transform, (rows, cols))


def _clipped(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}_clip.{ext}" if dot else f"{name}_clip"


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _matches(flt: dict[str, Any], props: dict[str, Any], geometry: Any) -> bool:
    kind = flt.get("type")
    if kind == "AndFilter":
        return all(_matches(f, props, geometry) for f in flt["config"])
    if kind == "OrFilter":
        return any(_matches(f, props, geometry) for f in flt["config"])
    if kind == "NotFilter":
        return not _matches(flt["config"], props, geometry)
    if kind == "GeometryFilter":
        return bool(shape(flt["config"]).intersects(geometry))
    if kind in ("DateRangeFilter", "RangeFilter"):
        value = props.get(flt["field_name"])
        if value is None:
            return False
        conv = _when if kind == "DateRangeFilter" else float
        v = conv(value)
        cfg = flt["config"]
        checks = {"gte": lambda a, b: a >= b, "gt": lambda a, b: a > b, "lte": lambda a, b: a <= b,
                  "lt": lambda a, b: a < b}
        return all(checks[op](v, conv(bound)) for op, bound in cfg.items())
    return True


@dataclass
class FakeOrder:
    id: str
    name: str
    item_type: str
    bundle: str
    item_ids: list[str]
    clip: bool
    polls: int = 0
    fail: str | None = None
    files: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)  # file name -> (bytes, asset, item)


class FakePlanet(FakeServer):
    """The fake Planet API. Configure faults through the attributes and methods below."""

    def __init__(self, api_key: str, scenes: list[FakeScene], page_size: int = 2) -> None:
        super().__init__()
        self.api_key = api_key
        self.scenes = {s.item_id: s for s in scenes}
        self.page_size = page_size
        self.orders: dict[str, FakeOrder] = {}
        self.searches: dict[str, list[dict[str, Any]]] = {}
        self.serve_spec = True
        self.fail_orders: str | None = None  # orders created from now on end in "failed" with this message
        self.states = ("queued", "running", "success")
        self.cuts: dict[str, list[int]] = {}  # file name -> byte offsets at which to drop the next downloads
        self.corrupt: dict[str, int] = {}  # file name -> how many next downloads to corrupt
        self._state_lock = threading.Lock()

    # fault helpers ---------------------------------------------------------------------------
    def cut_download(self, name_part: str, at: int, times: int = 1) -> None:
        self.cuts.setdefault(name_part, []).extend([at] * times)

    def corrupt_download(self, name_part: str, times: int) -> None:
        self.corrupt[name_part] = self.corrupt.get(name_part, 0) + times

    # routing ---------------------------------------------------------------------------------
    def _authorised(self, req: Request) -> bool:
        return req.headers.get("authorization") == f"api-key {self.api_key}"

    def handle(self, req: Request) -> Response:
        path = req.path.rstrip("/")
        if path.startswith("/download/"):
            return self._download(req, path)
        if not self._authorised(req):
            return error_response(401, "Please enter your API key, or email and password.")
        if path == "/compute/ops/bundles/spec":
            if not self.serve_spec:
                return error_response(404, "not found")
            return json_response({"bundles": {b: {"assets": {"PSScene": a}} for b, a in BUNDLES.items()}})
        if path == "/data/v1/quick-search" and req.method == "POST":
            return self._quick_search(req)
        if path.startswith("/data/v1/searches/") and path.endswith("/results"):
            return self._page(path.split("/")[4], int(req.query.get("_page", "1")))
        if path.startswith("/data/v1/item-types/"):
            parts = path.split("/")  # '', data, v1, item-types, TYPE, items, ID
            scene = self.scenes.get(parts[-1]) if len(parts) == 7 else None
            if scene is None:
                return error_response(404, f"item {parts[-1]} not found")
            return json_response(scene.feature)
        if path == "/compute/ops/orders/v2" and req.method == "POST":
            return self._create_order(req)
        if path.startswith("/compute/ops/orders/v2/") and req.method == "GET":
            return self._get_order(path.rsplit("/", 1)[-1])
        return error_response(404, f"no route {req.method} {path}")

    # data API --------------------------------------------------------------------------------
    def _quick_search(self, req: Request) -> Response:
        body = req.json()
        if body.get("item_types") != ["PSScene"]:
            return error_response(400, f"unsupported item types {body.get('item_types')}")
        flt = body.get("filter") or {}
        hits = [
            s.feature for s in self.scenes.values()
            if _matches(flt, s.feature["properties"], shape(s.feature["geometry"]))
        ]
        sid = uuid.uuid4().hex
        self.searches[sid] = hits
        return self._page(sid, 1)

    def _page(self, sid: str, page: int) -> Response:
        hits = self.searches.get(sid)
        if hits is None:
            return error_response(404, "search not found")
        start = (page - 1) * self.page_size
        body: dict[str, Any] = {"type": "FeatureCollection", "features": hits[start:start + self.page_size],
                                "_links": {"_self": f"{self.url}/data/v1/searches/{sid}/results?_page={page}"}}
        if start + self.page_size < len(hits):
            body["_links"]["_next"] = f"{self.url}/data/v1/searches/{sid}/results?_page={page + 1}"
        return json_response(body)

    # orders API ------------------------------------------------------------------------------
    def _create_order(self, req: Request) -> Response:
        body = req.json()
        products = body.get("products") or []
        if len(products) != 1:
            return error_response(400, "exactly one product expected")
        prod = products[0]
        bundle = prod.get("product_bundle")
        if bundle not in BUNDLES:
            return error_response(400, f"unknown bundle {bundle}")
        unknown = [i for i in prod.get("item_ids", []) if i not in self.scenes]
        if unknown:
            return error_response(400, f"unknown item ids {unknown}")
        clip = any("clip" in tool for tool in body.get("tools") or [])
        order = FakeOrder(
            id=str(uuid.uuid4()), name=body.get("name", ""), item_type=prod["item_type"], bundle=bundle,
            item_ids=list(prod["item_ids"]), clip=clip, fail=self.fail_orders,
        )
        for item_id in order.item_ids:
            scene = self.scenes[item_id]
            for asset in BUNDLES[bundle]:
                name, data, _media = scene.assets[asset]
                order.files[_clipped(name) if clip else name] = (data, asset, item_id)
            order.files[f"{item_id}_metadata.json"] = (json.dumps(scene.feature).encode(), "", item_id)
        self.orders[order.id] = order
        return json_response(self._order_json(order, "queued"), 202)

    def _get_order(self, order_id: str) -> Response:
        order = self.orders.get(order_id)
        if order is None:
            return error_response(404, f"order {order_id} not found")
        with self._state_lock:
            state = self.states[min(order.polls, len(self.states) - 1)]
            order.polls += 1
        if order.fail and state == self.states[-1]:
            state = "failed"
        return json_response(self._order_json(order, state))

    def manifest(self, order: FakeOrder) -> dict[str, Any]:
        files = []
        for name, (data, asset, item_id) in order.files.items():
            annotations = {"planet/item_id": item_id, "planet/item_type": order.item_type}
            if asset:
                annotations.update({"planet/asset_type": asset, "planet/bundle_type": order.bundle})
            files.append({
                "path": f"{order.item_type}/{name}",
                "media_type": "image/tiff" if name.endswith(".tif") else "text/plain",
                "size": len(data),
                "digests": {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()},
                "annotations": annotations,
            })
        return {"name": "", "files": files}

    def _order_json(self, order: FakeOrder, state: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": order.id, "name": order.name, "state": state, "created_on": "2024-01-01T00:00:00.000Z",
            "last_modified": "2024-01-01T00:01:00.000Z", "error_hints": [],
            "products": [{"item_ids": order.item_ids, "item_type": order.item_type,
                          "product_bundle": order.bundle}],
            "_links": {"_self": f"{self.url}/compute/ops/orders/v2/{order.id}"},
        }
        if state == "failed":
            body["last_message"] = order.fail
            body["error_hints"] = [f"{order.fail} (injected)"]
        if state == "success":
            results = [
                {"name": f"{order.id}/{order.item_type}/{name}", "delivery": "success",
                 "location": f"{self.url}/download/{order.id}/{name}?token=tok-{order.id[:8]}",
                 "expires_at": "2099-01-01T00:00:00.000Z"}
                for name in order.files
            ]
            results.append({"name": f"{order.id}/manifest.json", "delivery": "success",
                            "location": f"{self.url}/download/{order.id}/manifest.json?token=tok-{order.id[:8]}",
                            "expires_at": "2099-01-01T00:00:00.000Z"})
            body["_links"]["results"] = results
            body["last_message"] = "Manifest delivery completed"
        return body

    def _download(self, req: Request, path: str) -> Response:
        _, _, order_id, name = path.split("/", 3)
        order = self.orders.get(order_id)
        if order is None or req.query.get("token") != f"tok-{order_id[:8]}":
            return error_response(401, "bad or expired token")
        if name == "manifest.json":
            return json_response(self.manifest(order))
        if name not in order.files:
            return error_response(404, f"no file {name}")
        data = order.files[name][0]
        with self._state_lock:
            corrupt = next((k for k, n in self.corrupt.items() if n > 0 and k in name), None)
            if corrupt is not None:
                self.corrupt[corrupt] -= 1
                flipped = bytearray(data)
                flipped[len(flipped) // 2] ^= 0xFF
                data = bytes(flipped)
            cut_key = next((k for k, offs in self.cuts.items() if offs and k in name), None)
            cut = self.cuts[cut_key].pop(0) if cut_key is not None else None
        resp = bytes_response(req, data, "image/tiff" if name.endswith(".tif") else "application/octet-stream")
        if cut is not None and resp.status in (200, 206):
            start = int(resp.headers["Content-Range"].split()[1].split("-")[0]) if resp.status == 206 else 0
            resp.cut_at = max(cut - start, 0)
        return resp


def read_tif(data: bytes) -> np.ndarray:
    """The pixels of an in-memory GeoTIFF."""
    with MemoryFile(io.BytesIO(data)) as mem, mem.open() as ds:
        return np.asarray(ds.read())


__all__ = ["CRS", "FakePlanet", "FakeScene", "make_scene", "read_tif"]


def main(argv: list[str] | None = None) -> None:
    """Serve a demo Planet API on 127.0.0.1 with three generated scenes, and write a matching AOI file.

    From a source checkout: ``python -m tests.fakes.planet_server --port 8765 --aoi demo-aoi.geojson``.
    """
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--key", default="demo-key", help="the API key the fake accepts")
    parser.add_argument("--aoi", type=Path, default=Path("demo-aoi.geojson"), help="AOI file to write")
    parser.add_argument("--labels", type=Path, default=Path("demo-labels.geojson"), help="crop polygons to write")
    args = parser.parse_args(argv)
    top = 4262000.0
    scenes = [
        make_scene("20210610_180000_00_2416", "2021-06-10T18:00:00Z", (630000.0, top), size=192, cloud_cover=0.02,
                   cloud_box=(150, 192, 150, 192), seed=1),
        make_scene("20210612_180000_00_2416", "2021-06-12T18:00:00Z", (630300.0, top), size=192, seed=2),
        make_scene("20210615_180000_00_2416", "2021-06-15T18:00:00Z", (630000.0, top), size=192, cloud_cover=0.08,
                   clear_percent=85, seed=3),
    ]
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    aoi = shapely.transform(box(630030.0, top - 546.0, 630546.0, top - 30.0), _projector(to_wgs84))
    args.aoi.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(aoi)}))
    fields = [box(630000.0, top - 576.0, 630288.0, top - 300.0), box(630000.0, top - 300.0, 630288.0, top)]
    wgs_fields = [shapely.transform(f, _projector(to_wgs84)) for f in fields]
    args.labels.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"CLASS1": "G"}, "geometry": mapping(f)} for f in wgs_fields
    ]}))
    FakePlanet(args.key, scenes).serve_until_interrupted(
        args.port,
        "fake Planet API at {url}" + f" (key {args.key!r}); wrote {args.aoi} and {args.labels}. Ctrl-C stops it.",
    )


if __name__ == "__main__":
    main()
