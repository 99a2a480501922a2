"""Acquisition: from an area of interest and a date range to scenes that cropseg reads directly.

The only part of cropseg that touches the network. Two providers:

* Planet (:mod:`cropseg.acquire.planet`): :func:`search_planet` and :func:`order_planet` through
  the official ``planet`` SDK, with an API key.
* STAC (:mod:`cropseg.acquire.stac`): :func:`search_stac` and :func:`fetch_stac` for Sentinel-2
  L2A from any STAC API (Earth Search by default), no account needed.

Everything is synchronous for callers. The SDKs are imported on first use; without them the
functions raise :class:`~cropseg.errors.InputError` naming ``pip install 'cropseg[acquire]'``.
Every acquisition writes ``manifest.json`` beside the data (see :mod:`cropseg.manifest`).
"""

from __future__ import annotations

from cropseg.acquire._common import Aoi, RetryPolicy, StatusCallback, load_aoi
from cropseg.acquire.planet import (
    API_KEY_ENV,
    BUNDLE_PRODUCTS,
    DEFAULT_BUNDLE,
    DEFAULT_ITEM_TYPE,
    PLANET_API_URL,
    PlanetCandidate,
    PlanetOrderResult,
    PlanetSearch,
    order_planet,
    search_planet,
)
from cropseg.acquire.stac import (
    DEFAULT_COLLECTION,
    EARTH_SEARCH_URL,
    StacCandidate,
    StacFetchResult,
    StacSearch,
    boa_offset,
    fetch_stac,
    scl_to_udm2,
    search_stac,
)

__all__ = [
    "API_KEY_ENV",
    "BUNDLE_PRODUCTS",
    "DEFAULT_BUNDLE",
    "DEFAULT_COLLECTION",
    "DEFAULT_ITEM_TYPE",
    "EARTH_SEARCH_URL",
    "PLANET_API_URL",
    "Aoi",
    "PlanetCandidate",
    "PlanetOrderResult",
    "PlanetSearch",
    "RetryPolicy",
    "StacCandidate",
    "StacFetchResult",
    "StacSearch",
    "StatusCallback",
    "boa_offset",
    "fetch_stac",
    "load_aoi",
    "order_planet",
    "scl_to_udm2",
    "search_planet",
    "search_stac",
]
