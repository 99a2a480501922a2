"""The run manifest: one JSON record per data folder that traces a result back to its inputs.

``manifest.json`` lives beside the data it describes. Acquisition writes it (provider, item
ids, files with digests, AOI, filters, software versions); later stages append a record each
(labels used, model, metrics) under ``"stages"``. Only this module reads or writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from cropseg.errors import InputError
from cropseg.raster_io import atomic_path

MANIFEST_NAME = "manifest.json"
_VERSIONED = ("cropseg", "numpy", "rasterio", "geopandas", "shapely", "pyproj", "scikit-learn")


def software_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of cropseg and the libraries whose results it depends on."""
    out = {"python": platform.python_version()}
    for name in (*_VERSIONED, *extra):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a folder, or None when it has none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); delete or repair it") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a cropseg manifest (expected a JSON object)")
    return data


def write_manifest(folder: str | Path, data: dict[str, Any]) -> Path:
    """Write (replace) a folder's manifest atomically."""
    path = Path(folder) / MANIFEST_NAME
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def append_stage(folder: str | Path, stage: str, record: dict[str, Any]) -> Path:
    """Append a stage record (with time and software versions) to a folder's manifest, creating it if needed."""
    data = read_manifest(folder) or {"created": now_iso(), "software": software_versions()}
    entry = {"stage": stage, "time": now_iso(), "pid": os.getpid(), **record}
    data.setdefault("stages", []).append(entry)
    return write_manifest(folder, data)


def record_stage(scene_folder: str | Path, stage: str, record: dict[str, Any]) -> Path | None:
    """Append a stage record to the manifest of a scene folder that has one (acquired or generated data).

    Folders without a manifest are left alone: cropseg does not write into a user's own data folders.
    """
    if read_manifest(scene_folder) is None:
        return None
    return append_stage(scene_folder, stage, record)
