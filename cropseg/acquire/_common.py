"""What the Planet and STAC acquisition paths share: AOIs, dates, retries, callbacks, redaction."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import json
import random
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import geopandas as gpd
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from cropseg.errors import InputError, InvalidVectorError
from cropseg.manifest import software_versions
from cropseg.progress import ProgressCallback
from cropseg.raster_io import atomic_path
from cropseg.vector_io import read_vector

T = TypeVar("T")

#: Called with one line of status text (order state, what is being fetched).
StatusCallback = Callable[[str], None]

#: Libraries whose versions every acquisition manifest records, beside cropseg's own.
ACQUIRE_VERSIONS = ("planet", "httpx", "pystac-client", "pystac", "odc-stac", "odc-geo", "xarray")

__all__ = [
    "ACQUIRE_VERSIONS",
    "Aoi",
    "ProgressCallback",
    "RetryPolicy",
    "StatusCallback",
    "acquire_versions",
    "load_aoi",
    "need",
    "parse_date_range",
]


def need(module: str) -> Any:
    """Import an optional dependency of acquisition, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(
            f"this command needs {module.split('.')[0]} from the acquire extra: pip install 'cropseg[acquire]'"
        ) from exc


def acquire_versions() -> dict[str, str]:
    """Software versions for an acquisition manifest."""
    return software_versions(ACQUIRE_VERSIONS)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry rate limits (429), server errors (5xx) and dropped connections.

    The n-th retry waits ``min(max_backoff, backoff * 2 ** (n - 1))`` seconds plus up to 10 % jitter.

    Attributes:
        max_retries: retries after the first try (so ``max_retries + 1`` tries in all).
        backoff: seconds before the first retry.
        max_backoff: upper bound of one wait, seconds.
    """

    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 64.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise InputError(f"retry settings must not be negative: {self}")

    def wait(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.backoff * 2 ** max(attempt - 1, 0))
        return float(base + random.uniform(0.0, 0.1 * base))


@dataclass(frozen=True)
class Aoi:
    """An area of interest: one (multi)polygon in WGS 84 and the file it came from."""

    geometry: BaseGeometry
    source: str

    @property
    def geojson(self) -> dict[str, Any]:
        """The geometry as a GeoJSON dict with plain lists (JSON round-trip safe)."""
        return dict(json.loads(json.dumps(mapping(self.geometry))))

    @property
    def frame(self) -> gpd.GeoDataFrame:
        """The AOI as a one-row GeoDataFrame in EPSG:4326."""
        return gpd.GeoDataFrame(geometry=[self.geometry], crs="EPSG:4326")

    def coverage(self, footprint: dict[str, Any] | None) -> float:
        """Share (0..1) of the AOI's area that a GeoJSON footprint covers, measured in the AOI's UTM zone."""
        if not footprint:
            return 0.0
        try:
            other = shapely.geometry.shape(footprint)
        except (ValueError, TypeError, AttributeError, KeyError):
            return 0.0
        if not other.is_valid:
            other = shapely.make_valid(other)
        frame = gpd.GeoDataFrame(geometry=[self.geometry, other], crs="EPSG:4326")
        utm = frame.to_crs(frame.estimate_utm_crs())
        aoi_area = float(utm.geometry.iloc[0].area)
        if aoi_area <= 0:
            return 0.0
        return min(1.0, float(utm.geometry.iloc[0].intersection(utm.geometry.iloc[1]).area) / aoi_area)


def load_aoi(path: str | Path) -> Aoi:
    """Read an AOI file (any vector format) as one polygon or multipolygon in EPSG:4326.

    Raises:
        InputFileNotFoundError: the file does not exist.
        InvalidVectorError: unreadable, no CRS, or no polygon in it.
    """
    gdf = read_vector(path, "AOI")
    geom = gdf.to_crs("EPSG:4326").geometry.union_all()
    if geom.geom_type == "GeometryCollection":
        polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        geom = shapely.union_all(polys) if polys else geom
    if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise InvalidVectorError(
            f"AOI {path} holds no polygon (found {geom.geom_type}); give the area as a Polygon or MultiPolygon"
        )
    return Aoi(geometry=geom, source=str(path))


def _parse_one(value: str, what: str) -> tuple[datetime, bool]:
    """A UTC datetime, and whether the text was a bare date."""
    text = value.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC), True
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"{what} {value!r} is not a date: give YYYY-MM-DD (or an ISO 8601 date-time)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC), False


def parse_date_range(start: str, end: str) -> tuple[datetime, datetime]:
    """Parse ``--start`` and ``--end`` into a half-open UTC interval [start, end).

    A bare date as ``end`` includes that whole day: ``--end 2021-06-30`` searches up to
    2021-07-01T00:00Z, exclusive.
    """
    begin, _ = _parse_one(start, "--start")
    stop, bare = _parse_one(end, "--end")
    if bare:
        stop += timedelta(days=1)
    if stop <= begin:
        raise InputError(f"--end {end} is not after --start {start}; give a date range that moves forward")
    return begin, stop


def iso(value: datetime) -> str:
    """RFC 3339 text of a UTC datetime, with a ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def redact(text: str, *secrets: str | None) -> str:
    """Replace every secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def public_url(url: str) -> str:
    """A URL without user info or query string, safe to log and to store in a manifest."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def short(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters of a server's answer."""
    one = re.sub(r"\s+", " ", text).strip()
    return one if len(one) <= limit else one[: limit - 3] + "..."


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also when an event loop already runs (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def digests(path: Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def same_request(a: Any, b: Any) -> bool:
    """Whether two JSON-able request records are equal after a JSON round trip."""
    return bool(json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str)))
