"""PlanetScope through Planet's official ``planet`` SDK (3.x): search, order, download, verify.

The Data API search and the Orders API (create, poll, results) go through the SDK with every
client's ``base_url`` derived from one ``base_url`` (Planet's public API by default). The SDK
cannot resume a download and writes straight to the final name, so files are fetched here with
httpx: into a hidden ``.<name>.part`` beside the target, resumed with an HTTP ``Range`` request
after a dropped connection or on a re-run, checked against the md5 in the order's manifest, and
only then renamed into place.

Retries: the SDK's own retry covers only 429 and 502. A session subclass replaces it so that
rate limits (429), every server error (5xx) and dropped connections are retried with exponential
backoff (:class:`~cropseg.acquire.RetryPolicy`), and anything still failing becomes one
:class:`~cropseg.errors.CropSegError` that says what to do.

The SDK validates item types and bundles against a spec it fetches from a fixed planet.com
address. Before any SDK call this module fills that cache itself, from ``<base_url>/compute/ops/
bundles/spec`` (or, where a gateway does not serve it, from the bundles cropseg knows), so no
request goes anywhere but ``base_url``.

The API key is read from ``api_key`` or ``PL_API_KEY``; it is never logged, put in an error
message or written to a manifest.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    redact,
    run_sync,
    same_request,
    short,
    write_json,
)
from cropseg.errors import CropSegError, InputError, OutputError
from cropseg.manifest import now_iso as _now
from cropseg.manifest import read_manifest, write_manifest
from cropseg.radiometry import ResolvedProduct

#: Planet's public API root; the Data API is under ``/data/v1``, the Orders API under ``/compute/ops``.
PLANET_API_URL = "https://api.planet.com"
DEFAULT_ITEM_TYPE = "PSScene"
DEFAULT_BUNDLE = "analytic_sr_udm2"
#: Environment variable holding the API key.
API_KEY_ENV = "PL_API_KEY"
#: Planet's own order manifest (file list with md5/sha256), kept beside cropseg's ``manifest.json``.
ORDER_MANIFEST_NAME = "planet_order_manifest.json"
STATE_NAME = ".cropseg-order.json"

#: Bundles whose files cropseg reads (an image, its metadata XML, a UDM2), and how their pixels read.
BUNDLE_PRODUCTS: dict[str, ResolvedProduct] = {
    "analytic_sr_udm2": "analytic_sr",
    "analytic_udm2": "analytic",
    "analytic_8b_sr_udm2": "analytic_sr",
    "analytic_8b_udm2": "analytic",
}
_BUNDLE_ASSETS: dict[str, list[str]] = {
    "analytic_sr_udm2": ["ortho_analytic_4b_sr", "ortho_analytic_4b_xml", "ortho_udm2"],
    "analytic_udm2": ["ortho_analytic_4b", "ortho_analytic_4b_xml", "ortho_udm2"],
    "analytic_8b_sr_udm2": ["ortho_analytic_8b_sr", "ortho_analytic_8b_xml", "ortho_udm2"],
    "analytic_8b_udm2": ["ortho_analytic_8b", "ortho_analytic_8b_xml", "ortho_udm2"],
}
_DATA_PATH = "/data/v1"
_ORDERS_PATH = "/compute/ops"
_SPEC_PATH = "/compute/ops/bundles/spec"

__all__ = [
    "API_KEY_ENV",
    "BUNDLE_PRODUCTS",
    "DEFAULT_BUNDLE",
    "DEFAULT_ITEM_TYPE",
    "PLANET_API_URL",
    "PlanetCandidate",
    "PlanetOrderResult",
    "PlanetSearch",
    "order_planet",
    "search_planet",
]


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PlanetCandidate:
    """One Data API item found for an AOI, with how well it serves the AOI.

    Attributes:
        id: item id, e.g. ``20210615_101010_42_2416``.
        item_type: e.g. ``PSScene``.
        acquired: acquisition time (ISO 8601, UTC).
        cloud_cover: the item's ``cloud_cover`` (0..1), if given.
        clear: the item's clear share (``clear_percent`` / 100, else ``1 - cloud_cover``), if known.
        coverage: share (0..1) of the AOI's area inside the item's footprint.
        score: ``coverage x clear``: the expected clear share of the AOI; candidates are ranked by it.
        feature: the item as the Data API returned it (GeoJSON Feature).
    """

    id: str
    item_type: str
    acquired: str
    cloud_cover: float | None
    clear: float | None
    coverage: float
    score: float
    feature: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class PlanetSearch:
    """The result of :func:`search_planet`: ranked candidates and the filter that found them."""

    candidates: tuple[PlanetCandidate, ...]
    item_type: str
    search_filter: dict[str, Any]
    aoi: Aoi

    def to_geojson(self) -> dict[str, Any]:
        """A FeatureCollection of the candidates, best first, with ``cropseg:*`` ranking properties."""
        features = []
        for rank, c in enumerate(self.candidates, start=1):
            feat = dict(c.feature)
            props = dict(feat.get("properties") or {})
            props.update({"cropseg:rank": rank, "cropseg:coverage": c.coverage, "cropseg:score": c.score})
            feat["properties"] = props
            features.append(feat)
        return {"type": "FeatureCollection", "features": features}


@dataclass(frozen=True)
class PlanetOrderResult:
    """What :func:`order_planet` left on disk.

    Attributes:
        folder: the output folder (its ``manifest.json`` describes everything).
        order_id: the Planet order id.
        state: the order's final state (``success`` or ``partial``).
        item_ids: the items delivered.
        scene_folders: one folder per scene, each readable by ``cropseg.scene.open_scene``.
        files: every delivered file.
        downloaded: how many files this call fetched (0 when all were already there).
        skipped: True when a previous run had already completed this same order.
    """

    folder: Path
    order_id: str
    state: str
    item_ids: tuple[str, ...]
    scene_folders: tuple[Path, ...]
    files: tuple[Path, ...]
    downloaded: int
    skipped: bool


# --------------------------------------------------------------------------------------------- plumbing


def _api_key(api_key: str | None) -> str:
    key = (api_key or os.environ.get(API_KEY_ENV) or "").strip()
    if not key:
        raise InputError(
            f"no Planet API key: set {API_KEY_ENV} or pass --api-key "
            "(your key is under My Settings at https://www.planet.com/account/#/user-settings)"
        )
    return key


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


_SESSION_CLASS: Any = None


def _session_class() -> Any:
    """A ``planet.Session`` whose retry covers 429, every 5xx and dropped connections, with our backoff."""
    global _SESSION_CLASS
    if _SESSION_CLASS is not None:
        return _SESSION_CLASS
    planet = need("planet")
    httpx = need("httpx")
    api_error = planet.exceptions.APIError

    def transient(exc: BaseException) -> bool:
        if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
            return True
        status = getattr(exc, "cropseg_status", None)
        return isinstance(exc, api_error) and isinstance(status, int) and (status == 429 or status >= 500)

    base: Any = planet.Session

    class RetryingSession(base):  # type: ignore[misc,valid-type]
        def __init__(self, auth: Any, retry: RetryPolicy, read_timeout: float) -> None:
            super().__init__(auth=auth, read_timeout_secs=read_timeout)
            self.cropseg_retry = retry

        async def _retry(self, func: Callable[..., Any], *a: Any, **kw: Any) -> Any:
            attempt = 0
            while True:
                try:
                    return await func(*a, **kw)
                except Exception as exc:
                    if not transient(exc) or attempt >= self.cropseg_retry.max_retries:
                        exc.cropseg_tries = attempt + 1  # type: ignore[attr-defined]
                        raise
                    attempt += 1
                    await asyncio.sleep(self.cropseg_retry.wait(attempt))

        @classmethod
        def _convert_and_raise(cls, error: Any) -> None:
            try:
                super()._convert_and_raise(error)
            except api_error as exc:
                exc.cropseg_status = error.response.status_code
                raise

    _SESSION_CLASS = RetryingSession
    return _SESSION_CLASS


@dataclass(frozen=True)
class _Ctx:
    """One Planet connection: key, base URL, retries and callbacks."""

    key: str = field(repr=False)
    base_url: str
    retry: RetryPolicy
    timeout: float
    status: StatusCallback

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def public(self) -> str:
        return public_url(self.base_url)

    def session(self) -> Any:
        planet = need("planet")
        return _session_class()(planet.Auth.from_key(self.key), self.retry, self.timeout)

    def error(self, exc: BaseException, doing: str) -> CropSegError:
        """The cropseg error for a failure of the SDK or of httpx while ``doing`` something."""
        planet = need("planet")
        httpx = need("httpx")
        pe = planet.exceptions
        status = getattr(exc, "cropseg_status", None)
        tries = getattr(exc, "cropseg_tries", 1)
        text = short(redact(str(exc), self.key)) or type(exc).__name__
        where = self.public
        if isinstance(exc, pe.InvalidAPIKey) or status == 401:
            return InputError(
                f"Planet rejected the API key (HTTP 401) while {doing}: check {API_KEY_ENV} or --api-key "
                "(My Settings at https://www.planet.com/account/#/user-settings)"
            )
        if isinstance(exc, pe.NoPermission) or status == 403:
            return InputError(f"Planet refused access (HTTP 403) while {doing}: your account lacks permission ({text})")
        if isinstance(exc, pe.BadQuery) or status == 400:
            return InputError(f"Planet rejected the request (HTTP 400) while {doing}: {text}")
        if isinstance(exc, pe.MissingResource) or status == 404:
            return InputError(f"Planet found nothing (HTTP 404) while {doing}: {text}")
        if status == 429:
            return CropSegError(
                f"Planet kept rate-limiting (HTTP 429) while {doing}, {tries} tries; wait a minute and re-run"
            )
        if isinstance(status, int) and status >= 500:
            return CropSegError(
                f"the Planet API at {where} kept failing (HTTP {status}) while {doing}, {tries} tries: {text}; "
                "try again later"
            )
        if isinstance(exc, pe.APIError):
            return CropSegError(f"the Planet API answered HTTP {status} while {doing}: {text}")
        if isinstance(exc, httpx.HTTPError):
            return CropSegError(
                f"cannot reach the Planet API at {where} while {doing} ({type(exc).__name__}: {text}, {tries} tries); "
                "check the network, a proxy, or --base-url"
            )
        specs = planet.specs
        if isinstance(exc, specs.SpecificationException | specs.FetchBundlesSpecError | pe.ClientError):
            return InputError(f"{text} (while {doing})")
        return CropSegError(f"Planet request failed while {doing}: {text}")

    def run(self, coro_fn: Callable[[], Any], doing: str) -> Any:
        """Run an async SDK workflow synchronously, translating its failures."""
        planet = need("planet")
        httpx = need("httpx")
        try:
            return run_sync(coro_fn())
        except CropSegError:
            raise
        except (planet.exceptions.PlanetError, planet.specs.SpecificationException, httpx.HTTPError) as exc:
            raise self.error(exc, doing) from None


def _context(
    api_key: str | None, base_url: str, retry: RetryPolicy, timeout: float, status: StatusCallback | None
) -> _Ctx:
    if urlsplit(base_url).scheme not in ("http", "https"):
        raise InputError(f"--base-url {base_url!r} is not an http(s) URL; e.g. {PLANET_API_URL}")
    return _Ctx(_api_key(api_key), base_url.rstrip("/"), retry, timeout, status or (lambda _msg: None))


async def _ensure_bundle_spec(sess: Any, ctx: _Ctx, item_type: str, bundle: str | None) -> None:
    """Fill the SDK's bundle-spec cache from ``base_url`` so the SDK never fetches it from planet.com."""
    planet = need("planet")
    loader = planet.specs.PRODUCT_BUNDLES
    cache = getattr(loader, "cache", None)

    def covers(c: Any) -> bool:
        if not c:
            return False
        types = {t.lower() for t in c["item_types"]}
        if item_type.lower() not in types:
            return False
        if bundle is None:
            return True
        assets = c["bundles"].get(bundle, {}).get("assets", {})
        return any(t.lower() == item_type.lower() for t in assets)

    if covers(cache):
        return
    fetched: dict[str, Any] = {}
    try:
        response = await sess.request(method="GET", url=ctx.url(_SPEC_PATH))
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("bundles"), dict):
            fetched = body["bundles"]
    except planet.exceptions.MissingResource:
        ctx.status(f"{ctx.public} serves no bundle spec; using the bundles cropseg knows")
    merged: dict[str, Any] = dict(cache["bundles"]) if cache else {}
    merged.update(fetched)
    if not fetched:
        for name, assets in _BUNDLE_ASSETS.items():
            merged.setdefault(name, {"assets": {}})["assets"].setdefault(item_type, list(assets))
    if bundle is not None and bundle not in merged and not fetched:
        merged[bundle] = {"assets": {item_type: []}}
    item_types = set(itertools.chain.from_iterable(b.get("assets", {}).keys() for b in merged.values()))
    loader.cache = {"bundles": merged, "bundle_names": merged.keys(), "item_types": item_types}


# --------------------------------------------------------------------------------------------- search


def _candidate(feature: dict[str, Any], aoi: Aoi, item_type: str) -> PlanetCandidate:
    props = feature.get("properties") or {}
    cloud = props.get("cloud_cover")
    clear_pct = props.get("clear_percent")
    if isinstance(clear_pct, int | float):
        clear: float | None = float(clear_pct) / 100.0
    elif isinstance(cloud, int | float):
        clear = 1.0 - float(cloud)
    else:
        clear = None
    coverage = aoi.coverage(feature.get("geometry"))
    return PlanetCandidate(
        id=str(feature.get("id")),
        item_type=str(props.get("item_type") or item_type),
        acquired=str(props.get("acquired") or ""),
        cloud_cover=float(cloud) if isinstance(cloud, int | float) else None,
        clear=clear,
        coverage=coverage,
        score=coverage * (clear if clear is not None else 1.0),
        feature=feature,
    )


def _rank(candidates: list[PlanetCandidate]) -> list[PlanetCandidate]:
    newest_first = sorted(candidates, key=lambda c: c.acquired, reverse=True)
    return sorted(newest_first, key=lambda c: (-round(c.score, 6), c.cloud_cover if c.cloud_cover is not None else 1))


def _search_filter(aoi: Aoi, start: datetime, end: datetime, max_cloud: float) -> dict[str, Any]:
    df = need("planet").data_filter
    return dict(
        df.and_filter([
            df.geometry_filter(aoi.geojson),
            df.date_range_filter("acquired", gte=start, lt=end),
            df.range_filter("cloud_cover", lte=max_cloud),
        ])
    )


def _check_cloud(max_cloud: float) -> None:
    if not 0.0 <= max_cloud <= 1.0:
        hint = f"; did you mean {max_cloud / 100:g}?" if 1.0 < max_cloud <= 100.0 else ""
        raise InputError(f"--max-cloud {max_cloud:g} is not a fraction between 0 and 1 (Planet's cloud_cover){hint}")


async def _search(sess: Any, ctx: _Ctx, aoi: Aoi, item_type: str, flt: dict[str, Any]) -> list[PlanetCandidate]:
    planet = need("planet")
    await _ensure_bundle_spec(sess, ctx, item_type, None)
    client = planet.DataClient(sess, base_url=ctx.url(_DATA_PATH))
    found = [c async for c in _items(client, item_type, flt)]
    return _rank([_candidate(f, aoi, item_type) for f in found])


async def _items(client: Any, item_type: str, flt: dict[str, Any]) -> Any:
    async for feature in client.search([item_type], search_filter=flt, limit=0):
        yield feature


def search_planet(
    aoi: str | Path | Aoi,
    start: str,
    end: str,
    *,
    max_cloud: float = 0.1,
    item_type: str = DEFAULT_ITEM_TYPE,
    api_key: str | None = None,
    base_url: str = PLANET_API_URL,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    status: StatusCallback | None = None,
) -> PlanetSearch:
    """Search Planet's Data API for items over an AOI, all result pages, best candidates first.

    The filter is the reference one: the AOI geometry, ``acquired`` in [start, end) (a bare ``end``
    date includes that day), and ``cloud_cover <= max_cloud``.

    Args:
        aoi: AOI file (any vector format) or a loaded :class:`Aoi`.
        start: first day, ``YYYY-MM-DD`` (or ISO 8601 date-time, UTC if no offset).
        end: last day, inclusive when a bare date.
        max_cloud: highest ``cloud_cover`` (0..1).
        item_type: Data API item type.
        api_key: Planet API key; ``PL_API_KEY`` when None.
        base_url: API root (Planet's public API; a proxy, gateway or test server).
        retry: retries of 429 / 5xx / dropped connections.
        timeout: read timeout per request, seconds.
        status: receives one-line progress messages.

    Raises:
        InputError: bad arguments, or the key is missing or rejected.
        CropSegError: the API kept failing after the retries.
    """
    area = aoi if isinstance(aoi, Aoi) else load_aoi(aoi)
    _check_cloud(max_cloud)
    begin, stop = parse_date_range(start, end)
    ctx = _context(api_key, base_url, retry or RetryPolicy(), timeout, status)
    flt = _search_filter(area, begin, stop, max_cloud)

    async def main() -> list[PlanetCandidate]:
        async with ctx.session() as sess:
            return await _search(sess, ctx, area, item_type, flt)

    ctx.status(f"searching {item_type} at {ctx.public}")
    found = ctx.run(main, "searching the Data API")
    return PlanetSearch(candidates=tuple(found), item_type=item_type, search_filter=flt, aoi=area)


# --------------------------------------------------------------------------------------------- order


@dataclass(frozen=True)
class _Want:
    """What the user asked for, as stored in the state file and manifest to recognise a re-run."""

    request: dict[str, Any]
    ids: tuple[str, ...] | None
    best: int | None
    window: tuple[datetime, datetime] | None
    max_cloud: float


def _item_summary(feature: dict[str, Any], aoi: Aoi) -> dict[str, Any]:
    props = feature.get("properties") or {}
    return {
        "id": feature.get("id"),
        "acquired": props.get("acquired"),
        "cloud_cover": props.get("cloud_cover"),
        "clear_percent": props.get("clear_percent"),
        "satellite_id": props.get("satellite_id"),
        "aoi_coverage": round(aoi.coverage(feature.get("geometry")), 6),
        "geometry": feature.get("geometry"),
    }


async def _place_order(
    ctx: _Ctx, aoi: Aoi, want: _Want, item_type: str, bundle: str, clip: bool, name: str, state_path: Path,
    poll_interval: float, max_wait: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    planet = need("planet")
    async with ctx.session() as sess:
        await _ensure_bundle_spec(sess, ctx, item_type, bundle)
        orders = planet.OrdersClient(sess, base_url=ctx.url(_ORDERS_PATH))
        state = _read_state(state_path)
        order: dict[str, Any] | None = None
        items: list[dict[str, Any]] = []
        if state is not None and same_request(state.get("request"), want.request):
            try:
                order = await orders.get_order(state["order_id"])
            except planet.exceptions.MissingResource:
                ctx.status(f"earlier order {state['order_id']} is unknown to {ctx.public}; placing a new one")
            items = list(state.get("items") or [])
            if order is not None and order.get("state") in ("failed", "cancelled"):
                ctx.status(f"earlier order {order['id']} {order['state']}; placing a new one")
                order = None
            elif order is not None:
                ctx.status(f"resuming order {state['order_id']}")
        if order is None:
            items = await _resolve_items(sess, ctx, aoi, want, item_type)
            ids = [str(i["id"]) for i in items]
            tools = [planet.order_request.clip_tool(aoi.geojson)] if clip else None
            request = planet.order_request.build_request(
                name, [planet.order_request.product(ids, bundle, item_type)], tools=tools
            )
            order = await orders.create_order(request)
            ctx.status(f"order {order['id']} created for {len(ids)} item(s): {', '.join(ids)}")
            write_json(state_path, {"request": want.request, "order_id": order["id"], "items": items})
        order_id = str(order["id"])
        polls = max(1, int(max_wait / max(poll_interval, 0.01)) + 1)
        try:
            await orders.wait(
                order_id, delay=poll_interval, max_attempts=polls,
                callback=lambda s: ctx.status(f"order {order_id}: {s}"),
            )
        except planet.exceptions.ClientError as exc:
            if "Maximum number of attempts" not in str(exc):
                raise
            raise CropSegError(
                f"Planet order {order_id} did not finish within {max_wait:g} s; re-run the same command later "
                "to keep waiting (the order is remembered in the output folder)"
            ) from None
        order = await orders.get_order(order_id)
    return dict(order), items


async def _resolve_items(sess: Any, ctx: _Ctx, aoi: Aoi, want: _Want, item_type: str) -> list[dict[str, Any]]:
    planet = need("planet")
    if want.ids is not None:
        data = planet.DataClient(sess, base_url=ctx.url(_DATA_PATH))
        items = []
        for item_id in want.ids:
            try:
                feature = await data.get_item(item_type, item_id)
            except planet.exceptions.MissingResource:
                raise InputError(
                    f"Planet has no {item_type} item {item_id!r}; check the id (cropseg search planet lists them)"
                ) from None
            items.append(_item_summary(feature, aoi))
        return items
    assert want.window is not None and want.best is not None
    flt = _search_filter(aoi, want.window[0], want.window[1], want.max_cloud)
    ranked = [c for c in await _search(sess, ctx, aoi, item_type, flt) if c.coverage > 0]
    if not ranked:
        raise InputError(
            f"no {item_type} scene over the AOI between {iso(want.window[0])} and {iso(want.window[1])} with "
            f"cloud cover <= {want.max_cloud:g}; widen the dates or raise --max-cloud"
        )
    chosen = ranked[: want.best]
    if len(chosen) < want.best:
        ctx.status(f"only {len(chosen)} candidate(s) found; ordering those")
    return [_item_summary(c.feature, aoi) for c in chosen]


def _read_state(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "order_id" in data else None


# --------------------------------------------------------------------------------------------- download


@dataclass
class _File:
    name: str
    location: str
    rel: str
    item_id: str | None
    asset_type: str | None
    md5: str | None
    sha256: str | None
    size: int | None
    dest: Path = Path()
    digests: tuple[str, str] | None = None  # (md5, sha256) of the verified file


def _role(f: _File) -> str | None:
    asset, lower = f.asset_type or "", f.name.lower()
    if asset == "ortho_udm2" or ("udm2" in lower and lower.endswith((".tif", ".tiff"))):
        return "udm2"
    if asset.endswith("_xml") or (lower.endswith(".xml") and "metadata" in lower):
        return "metadata"
    if asset.startswith("ortho_analytic") or ("analytic" in lower and lower.endswith((".tif", ".tiff"))):
        return "image"
    return None


def _location(ctx: _Ctx, url: str) -> str:
    """A result location, sent through ``base_url`` when it points at Planet's public API."""
    if ctx.base_url != PLANET_API_URL and url.startswith(PLANET_API_URL + "/"):
        url = ctx.base_url + url[len(PLANET_API_URL):]
    if ctx.base_url != PLANET_API_URL and _origin(url) != _origin(ctx.base_url):
        raise CropSegError(
            f"the order's download location {public_url(url)} is not under --base-url {ctx.public}; "
            "refusing to contact another host"
        )
    return url


class _Downloader:
    """Resumable, verified downloads with httpx (the SDK cannot resume)."""

    def __init__(self, ctx: _Ctx, progress: ProgressCallback | None) -> None:
        httpx = need("httpx")
        planet = need("planet")
        self.ctx = ctx
        self.httpx = httpx
        self.progress = progress
        self.auth = planet.Auth.from_key(ctx.key)
        self.client = httpx.Client(timeout=httpx.Timeout(30.0, read=ctx.timeout), follow_redirects=True)

    def close(self) -> None:
        self.client.close()

    def _auth_for(self, url: str) -> Any:
        return self.auth if _origin(url) == _origin(self.ctx.base_url) else None

    def get_json(self, url: str, what: str) -> Any:
        attempt = 0
        while True:
            try:
                response = self.client.get(url, auth=self._auth_for(url))
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Transient(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise self._fatal(response.status_code, what)
                return response.json()
            except (_Transient, self.httpx.TransportError, ValueError) as exc:
                attempt += 1
                if attempt > self.ctx.retry.max_retries:
                    raise CropSegError(
                        f"cannot fetch {what} from {public_url(url)} after {attempt} tries "
                        f"({short(redact(str(exc), self.ctx.key))}); re-run the same command to resume"
                    ) from None
                time.sleep(self.ctx.retry.wait(attempt))

    def _fatal(self, status: int, what: str) -> CropSegError:
        if status in (401, 403):
            return InputError(
                f"Planet refused the download of {what} (HTTP {status}): the link may have expired or the key "
                "lacks access; re-run the same command to fetch fresh links"
            )
        return CropSegError(f"Planet answered HTTP {status} for {what}; re-run the same command to try again")

    def fetch(self, f: _File) -> bool:
        """Download one file to ``f.dest`` (resuming, verifying); False when it was already there and good."""
        dest = f.dest
        if dest.exists() and self._verified(dest, f) is None:
            return False
        part = dest.with_name(f".{dest.name}.part")
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create folder {part.parent}: {exc}") from exc
        stalls = corrupt = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if f.size is not None and have > f.size:
                part.unlink()
                have = 0
            if f.size is None or have < f.size:
                try:
                    gained = self._stream(f, part, have)
                except _Transient as exc:
                    gained = exc.gained
                    stalls = 0 if gained else stalls + 1
                    if stalls > self.ctx.retry.max_retries:
                        now = part.stat().st_size if part.exists() else 0
                        raise CropSegError(
                            f"downloading {f.name} kept failing ({exc}) after {stalls} tries without progress; "
                            f"re-run the same command to resume from byte {now}"
                        ) from None
                    time.sleep(self.ctx.retry.wait(max(stalls, 1)))
                    continue
            problem = self._verified(part, f)
            if problem is None:
                os.replace(part, dest)
                return True
            part.unlink(missing_ok=True)
            corrupt += 1
            if corrupt > self.ctx.retry.max_retries:
                raise CropSegError(
                    f"{f.name} failed verification {corrupt} times ({problem}); the delivered file may be "
                    "corrupt: re-run later, or place a new order"
                )
            self.ctx.status(f"{f.name}: {problem}; downloading it again")

    @staticmethod
    def _verified(path: Path, f: _File) -> str | None:
        """None when ``path`` matches the order manifest's size and digest, else what is wrong."""
        size = path.stat().st_size
        if f.size is not None and size != f.size:
            return f"size {size} bytes, the order manifest says {f.size}"
        md5, sha = digests(path)
        f.digests = (md5, sha)
        if f.md5 and md5 != f.md5:
            return f"md5 {md5} does not match the order manifest's {f.md5}"
        if not f.md5 and f.sha256 and sha != f.sha256:
            return f"sha256 {sha} does not match the order manifest's {f.sha256}"
        return None

    def _stream(self, f: _File, part: Path, have: int) -> int:
        httpx = self.httpx
        headers = {"Range": f"bytes={have}-"} if have else {}
        gained = 0
        try:
            with self.client.stream("GET", f.location, headers=headers, auth=self._auth_for(f.location)) as r:
                if r.status_code == 416 and have:
                    part.unlink(missing_ok=True)  # our partial file no longer fits the server's: start over
                    raise _Transient("HTTP 416 on resume", 1)
                if r.status_code == 429 or r.status_code >= 500:
                    raise _Transient(f"HTTP {r.status_code}")
                if r.status_code >= 400:
                    raise self._fatal(r.status_code, f.name)
                start = have if r.status_code == 206 else 0
                if r.status_code == 206 and not r.headers.get("content-range", "").startswith(f"bytes {have}-"):
                    part.unlink(missing_ok=True)
                    raise _Transient("server resumed at the wrong offset", 1)
                total = f.size if f.size is not None else start + int(r.headers.get("content-length") or 0)
                done = start
                self._report(f.name, done, total)
                with open(part, "r+b" if start and part.exists() else "wb") as out:
                    out.seek(start)
                    out.truncate()
                    for chunk in r.iter_bytes():
                        out.write(chunk)
                        done += len(chunk)
                        gained += len(chunk)
                        self._report(f.name, done, total)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {short(str(exc), 120)}", gained) from None
        except OSError as exc:
            raise OutputError(f"cannot write {part}: {exc}") from exc
        return gained

    def _report(self, name: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(name, done, max(total, done))


class _Transient(Exception):
    def __init__(self, message: str, gained: int = 0) -> None:
        super().__init__(message)
        self.gained = gained


def _files_of(ctx: _Ctx, order: dict[str, Any], manifest: dict[str, Any], ids: list[str]) -> list[_File]:
    order_id = str(order["id"])
    by_path: dict[str, dict[str, Any]] = {}
    for entry in manifest.get("files") or []:
        if isinstance(entry, dict) and "path" in entry:
            by_path[str(entry["path"])] = entry
            by_path.setdefault(Path(str(entry["path"])).name, entry)
    files = []
    for res in (order.get("_links") or {}).get("results") or []:
        if not res or "location" not in res or "name" not in res:
            continue
        name = str(res["name"])
        rel = name[len(order_id) + 1:] if name.startswith(order_id + "/") else name
        base = Path(rel).name
        if base == "manifest.json":
            continue
        entry = by_path.get(rel) or by_path.get(base) or {}
        notes = entry.get("annotations") or {}
        item_id = notes.get("planet/item_id") or next((i for i in ids if base.startswith(i)), None)
        dig = entry.get("digests") or {}
        size = entry.get("size")
        files.append(_File(
            name=base, location=_location(ctx, str(res["location"])), rel=rel, item_id=item_id,
            asset_type=notes.get("planet/asset_type"), md5=dig.get("md5"), sha256=dig.get("sha256"),
            size=int(size) if isinstance(size, int) else None,
        ))
    return files


# --------------------------------------------------------------------------------------------- entry point


def _already_done(out: Path, want: _Want) -> dict[str, Any] | None:
    manifest = read_manifest(out)
    if not manifest or manifest.get("provider") != "planet" or not manifest.get("complete"):
        return None
    if not same_request(manifest.get("request"), want.request):
        return None
    for entry in manifest.get("files") or []:
        path = out / str(entry.get("path"))
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return None
    return manifest


def order_planet(
    aoi: str | Path | Aoi,
    out: str | Path,
    *,
    ids: list[str] | None = None,
    best: int | None = None,
    start: str | None = None,
    end: str | None = None,
    max_cloud: float = 0.1,
    item_type: str = DEFAULT_ITEM_TYPE,
    bundle: str = DEFAULT_BUNDLE,
    clip: bool = False,
    name: str | None = None,
    api_key: str | None = None,
    base_url: str = PLANET_API_URL,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    poll_interval: float = 10.0,
    max_wait: float = 6 * 3600.0,
    status: StatusCallback | None = None,
    progress: ProgressCallback | None = None,
) -> PlanetOrderResult:
    """Order PlanetScope scenes, wait for the order, download and verify every file.

    Give either ``ids`` or ``best`` (the ``best`` top-ranked candidates of a search over
    ``start``..``end`` with ``max_cloud``). The output folder is ready for ``cropseg train`` /
    ``cropseg predict``: Planet's file names, and a ``manifest.json`` naming the image, metadata
    XML and UDM2. One scene lands in ``out`` itself; several land in one sub-folder per item id,
    each with its own manifest, listed by the top-level one.

    Re-running the same command resumes: it finds the order again (``.cropseg-order.json``),
    resumes partial files, and re-fetches any file whose md5 does not match. After success a
    re-run makes no request at all.

    Args:
        aoi: AOI file or :class:`Aoi`; used for ``best``, for ``clip``, and recorded.
        out: output folder.
        ids: item ids to order.
        best: order the N best candidates of a search instead.
        start: search start (with ``best``).
        end: search end, inclusive when a bare date (with ``best``).
        max_cloud: highest ``cloud_cover`` (0..1) for ``best``.
        item_type: Data API item type.
        bundle: product bundle; one of :data:`BUNDLE_PRODUCTS`.
        clip: clip the scenes to the AOI server-side (Planet's clip tool).
        name: order name (default: ``cropseg <AOI file stem>``).
        api_key: Planet API key; ``PL_API_KEY`` when None.
        base_url: API root (Planet's public API; a proxy, gateway or test server).
        retry: retries of 429 / 5xx / dropped connections / failed verification.
        timeout: read timeout per request, seconds.
        poll_interval: seconds between order-state polls.
        max_wait: give up waiting for the order after this many seconds (a re-run waits again).
        status: receives one-line status messages (order state, ...).
        progress: receives ``(file name, bytes done, bytes total)`` while downloading.

    Raises:
        InputError: bad arguments; the key is missing or rejected; unknown items.
        CropSegError: the order failed, or the API or a download kept failing after the retries.
        OutputError: the output folder cannot be written.
    """
    area = aoi if isinstance(aoi, Aoi) else load_aoi(aoi)
    out = Path(out)
    if (ids is None) == (best is None):
        raise InputError("give either --ids ID,... or --best N (not both)")
    if bundle not in BUNDLE_PRODUCTS:
        raise InputError(f"--bundle {bundle!r} is not one cropseg reads; choose one of {', '.join(BUNDLE_PRODUCTS)}")
    window = None
    if best is not None:
        if best < 1:
            raise InputError(f"--best must be at least 1, got {best}")
        if not start or not end:
            raise InputError("--best needs --start and --end to search for candidates")
        _check_cloud(max_cloud)
        window = parse_date_range(start, end)
    if ids is not None:
        ids = [i.strip() for i in ids if i.strip()]
        if not ids:
            raise InputError("--ids is empty; give one or more item ids separated by commas")
    selection: dict[str, Any] = {"ids": list(ids)} if ids is not None else {}
    if window is not None:
        selection = {"best": best, "start": iso(window[0]), "end": iso(window[1]), "max_cloud": max_cloud}
    want = _Want(
        request={"item_type": item_type, "bundle": bundle, "clip": clip, "aoi": area.geojson, **selection},
        ids=tuple(ids) if ids is not None else None, best=best, window=window, max_cloud=max_cloud,
    )
    done = _already_done(out, want)
    if done is not None:
        scenes = tuple(out / s for s in done.get("scenes") or ["."])
        prior = done.get("order") or {}
        return PlanetOrderResult(
            folder=out, order_id=str(prior.get("id")), state=str(prior.get("state")),
            item_ids=tuple(str(i["id"]) for i in done.get("items") or []), scene_folders=scenes,
            files=tuple(out / str(f["path"]) for f in done.get("files") or []), downloaded=0, skipped=True,
        )

    ctx = _context(api_key, base_url, retry or RetryPolicy(), timeout, status)
    state_path = out / STATE_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc}") from exc
    order_name = name or f"cropseg {Path(area.source).stem}"

    order, items = ctx.run(
        lambda: _place_order(
            ctx, area, want, item_type, bundle, clip, order_name, state_path, poll_interval, max_wait
        ),
        "ordering",
    )
    order_id, state = str(order["id"]), str(order.get("state"))
    if state not in ("success", "partial"):
        hints = "; ".join(str(h) for h in order.get("error_hints") or [])
        detail = short(redact(" ".join(x for x in (str(order.get("last_message") or ""), hints) if x), ctx.key))
        raise CropSegError(
            f"Planet order {order_id} ended in state {state!r}: {detail or 'no reason given'}. Check the item ids "
            "and the bundle (cropseg search planet), then re-run: a new order will be placed"
        )
    return _deliver(ctx, area, want, order, items, out, bundle, item_type, clip, progress)


def _deliver(
    ctx: _Ctx, aoi: Aoi, want: _Want, order: dict[str, Any], items: list[dict[str, Any]], out: Path,
    bundle: str, item_type: str, clip: bool, progress: ProgressCallback | None,
) -> PlanetOrderResult:
    order_id = str(order["id"])
    results = (order.get("_links") or {}).get("results") or []
    manifest_res = next((r for r in results if r and str(r.get("name", "")).endswith("manifest.json")), None)
    if manifest_res is None:
        raise CropSegError(f"Planet order {order_id} lists no manifest.json, so its files cannot be verified")
    loader = _Downloader(ctx, progress)
    try:
        order_manifest = loader.get_json(_location(ctx, str(manifest_res["location"])), "the order manifest")
        if not isinstance(order_manifest, dict):
            raise CropSegError(f"the manifest of Planet order {order_id} is not a JSON object")
        ids = [str(i["id"]) for i in items]
        files = _files_of(ctx, order, order_manifest, ids)
        delivered = [i for i in ids if any(f.item_id == i for f in files)]
        if not delivered:
            raise CropSegError(f"Planet order {order_id} ({order.get('state')}) delivered no scene files")
        multi = len(delivered) > 1
        for f in files:
            folder = out / f.item_id if multi and f.item_id else out
            f.dest = folder / f.name
        write_json(out / ORDER_MANIFEST_NAME, order_manifest)
        fetched = 0
        for f in files:
            ctx.status(f"downloading {f.name}")
            fetched += loader.fetch(f)
    finally:
        loader.close()
    missing = [i for i in ids if i not in delivered]
    if missing:
        ctx.status(f"order {order_id} is {order.get('state')}: no files for {', '.join(missing)}")
    return _write_manifests(ctx, aoi, want, order, items, files, delivered, out, bundle, item_type, clip, fetched)


def _write_manifests(
    ctx: _Ctx, aoi: Aoi, want: _Want, order: dict[str, Any], items: list[dict[str, Any]], files: list[_File],
    delivered: list[str], out: Path, bundle: str, item_type: str, clip: bool, fetched: int,
) -> PlanetOrderResult:
    product = BUNDLE_PRODUCTS[bundle]
    multi = len(delivered) > 1
    order_rec = {
        "id": order["id"], "name": order.get("name"), "state": order.get("state"),
        "created_on": order.get("created_on"), "last_modified": order.get("last_modified"),
    }
    file_recs: list[dict[str, Any]] = []
    roles: dict[str, dict[str, str]] = {}
    for f in files:
        md5, sha = f.digests or digests(f.dest)
        rel = f.dest.relative_to(out).as_posix()
        file_recs.append({
            "path": rel, "item_id": f.item_id, "asset_type": f.asset_type, "size": f.dest.stat().st_size,
            "md5": md5, "sha256": sha,
        })
        role = _role(f)
        if role and f.item_id:
            roles.setdefault(f.item_id, {}).setdefault(role, rel)
    by_id = {str(i["id"]): i for i in items}
    base: dict[str, Any] = {
        "provider": "planet", "item_type": item_type, "bundle": bundle, "product": product, "clip": clip,
        "order": order_rec, "base_url": ctx.public, "aoi": aoi.geojson, "aoi_source": aoi.source,
        "date_range": (
            {"start": iso(want.window[0]), "end": iso(want.window[1]), "end_exclusive": True} if want.window else None
        ),
        "search_filters": {"max_cloud": want.max_cloud, "best": want.best} if want.best else None,
        "software": acquire_versions(),
    }
    scenes: list[Path] = []
    if multi:
        for item_id in delivered:
            folder = out / item_id
            scenes.append(folder)
            prefix = item_id + "/"
            sub_files = [{**r, "path": r["path"][len(prefix):]} for r in file_recs if r["item_id"] == item_id]
            sub_roles = {k: v[len(prefix):] for k, v in roles.get(item_id, {}).items()}
            write_manifest(folder, {
                "created": _now(), **base, "complete": True, "items": [by_id.get(item_id, {"id": item_id})],
                **sub_roles, "files": sub_files, "parent": "..",
            })
    else:
        scenes.append(out)
    previous = read_manifest(out) or {}
    top = {
        "created": _now(), **base, "complete": True, "request": want.request,
        "items": [by_id.get(i, {"id": i}) for i in delivered], **roles.get(delivered[0], {}),
        "scenes": [s.relative_to(out).as_posix() for s in scenes] if multi else ["."],
        "files": file_recs, "order_manifest": ORDER_MANIFEST_NAME,
    }
    if same_request(previous.get("request"), want.request) and previous.get("stages"):
        top["stages"] = previous["stages"]
    write_manifest(out, top)
    (out / STATE_NAME).unlink(missing_ok=True)
    return PlanetOrderResult(
        folder=out, order_id=str(order["id"]), state=str(order.get("state")), item_ids=tuple(delivered),
        scene_folders=tuple(scenes), files=tuple(f.dest for f in files), downloaded=fetched, skipped=False,
    )
