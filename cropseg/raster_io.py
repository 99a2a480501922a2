"""Raster file I/O: the only module of the core that opens GeoTIFFs.

Everything here reads or writes files with rasterio/GDAL and turns GDAL's failures into
cropseg errors that say what to fix. Outputs are written to a hidden temporary name beside the
target and renamed into place only when complete, so a failed run leaves no partial file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.warp import reproject
from rasterio.windows import Window as RioWindow

from cropseg.errors import InputFileNotFoundError, InvalidRasterError, OutputError
from cropseg.grid import Grid, Window
from cropseg.tiling import inner_slices, intersect

#: Creation options of every GeoTIFF cropseg writes as a Cloud-Optimized GeoTIFF.
COG_OPTIONS: dict[str, str] = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "2",
    "BLOCKSIZE": "512",
    "OVERVIEWS": "AUTO",
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",  # compress blocks on every core (the same bytes; half the time on 2 cores)
}
#: :data:`COG_OPTIONS` for rasters of classes or flags (class maps, labels, UDM2: every 8-bit raster cropseg
#: writes): each overview pixel takes the most frequent value of the pixels it covers. GDAL's default for
#: other rasters, cubic, invents values between classes (2s among the 0s and 1s of a class map) and is slower.
#: No predictor: differences between class codes are no smoother than the codes (a PSScene-sized class map
#: 6 % smaller without it, and faster to write).
CLASS_COG_OPTIONS: dict[str, str] = {**COG_OPTIONS, "RESAMPLING": "MODE", "PREDICTOR": "NO"}


def cog_options(dtype: str) -> dict[str, str]:
    """COG creation options for a raster of ``dtype``: :data:`CLASS_COG_OPTIONS` for uint8, else :data:`COG_OPTIONS`."""
    return CLASS_COG_OPTIONS if dtype == "uint8" else COG_OPTIONS


@dataclass(frozen=True)
class RasterInfo:
    """What cropseg needs to know of a raster file before reading it."""

    path: Path
    grid: Grid
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    block_shape: tuple[int, int]


def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise InputFileNotFoundError(f"{what} {path} does not exist; check the path")


def _to_rio_window(window: Window | None) -> RioWindow | None:
    if window is None:
        return None
    return RioWindow(window.col_off, window.row_off, window.width, window.height)


@contextlib.contextmanager
def _open(path: Path, what: str) -> Iterator[Any]:
    _check_exists(path, what)
    try:
        with warnings.catch_warnings():
            # cropseg checks georeferencing itself and says what to do about it
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            yield ds
    except RasterioIOError as exc:
        raise InvalidRasterError(
            f"{what} {path} is not a raster GDAL can read ({exc}); give a GeoTIFF"
        ) from exc


def grid_of(ds: Any) -> Grid:
    """The :class:`Grid` of an open rasterio dataset."""
    return Grid(ds.transform, CRS.from_user_input(ds.crs.to_wkt()), ds.width, ds.height)


def read_info(path: str | Path, what: str = "raster") -> RasterInfo:
    """Read a raster's grid, band count, dtype and nodata.

    Raises:
        InputFileNotFoundError: the file does not exist.
        InvalidRasterError: not a raster, or it has no CRS / no georeferencing.
    """
    path = Path(path)
    with _open(path, what) as ds:
        if ds.crs is None:
            raise InvalidRasterError(
                f"{what} {path} has no CRS; assign one, e.g. `gdal_edit.py -a_srs EPSG:32610 {path}`"
            )
        if ds.transform.is_identity:
            raise InvalidRasterError(f"{what} {path} is not georeferenced (identity transform)")
        if ds.transform.b != 0 or ds.transform.d != 0:
            raise InvalidRasterError(
                f"{what} {path} is rotated; warp it north-up first, e.g. with gdalwarp"
            )
        return RasterInfo(
            path=path,
            grid=grid_of(ds),
            count=ds.count,
            dtype=ds.dtypes[0],
            nodata=ds.nodata,
            descriptions=tuple(ds.descriptions),
            block_shape=tuple(ds.block_shapes[0]),
        )


def read(
    path: str | Path,
    window: Window | None = None,
    bands: Sequence[int] | None = None,
    boundless: bool = False,
) -> np.ndarray:
    """Read bands (1-based) of a window as an array of shape (bands, rows, cols).

    With ``boundless`` the window may reach past the raster's edge; those pixels read as 0.
    """
    path = Path(path)
    with _open(path, "raster") as ds:
        indexes = list(bands) if bands is not None else list(range(1, ds.count + 1))
        if boundless and window is not None:
            return read_padded(ds, window, indexes)
        return np.asarray(ds.read(indexes, window=_to_rio_window(window)))


def read_padded(ds: Any, window: Window, indexes: Sequence[int] | None = None) -> np.ndarray:
    """Bands of ``window`` from an open dataset (bands, rows, cols); pixels past its edge read as 0.

    Reads only the part inside the raster and pads it, instead of rasterio's boundless mode
    (which builds a VRT for every read).
    """
    idx = list(indexes) if indexes is not None else list(range(1, ds.count + 1))
    part = intersect(window, (ds.height, ds.width))
    if part == window:
        return np.asarray(ds.read(idx, window=_to_rio_window(window)))
    out = np.zeros((len(idx), window.height, window.width), dtype=ds.dtypes[idx[0] - 1])
    if part is not None:
        out[(slice(None), *inner_slices(window, part))] = ds.read(idx, window=_to_rio_window(part))
    return out


def read_valid(path: str | Path, window: Window | None = None, boundless: bool = False) -> np.ndarray:
    """Boolean (rows, cols) mask of pixels that hold data in every band (GDAL's dataset mask)."""
    path = Path(path)
    with _open(path, "raster") as ds:
        if boundless and window is not None:
            # dataset_mask has no boundless mode: read the valid part and pad with False.
            out = np.zeros((window.height, window.width), dtype=bool)
            part = intersect(window, (ds.height, ds.width))
            if part is not None:
                out[inner_slices(window, part)] = ds.dataset_mask(window=_to_rio_window(part)) > 0
            return out
        return np.asarray(ds.dataset_mask(window=_to_rio_window(window)) > 0)


def reproject_to_grid(
    path: str | Path, grid: Grid, band: int = 1, nodata: float = 255, what: str = "raster"
) -> np.ndarray:
    """Read one band of any raster resampled (nearest) onto ``grid``; outside it is ``nodata``."""
    path = Path(path)
    with _open(path, what) as ds:
        if ds.crs is None:
            raise InvalidRasterError(f"{what} {path} has no CRS; assign one before using it")
        out = np.full(grid.shape, nodata, dtype=ds.dtypes[band - 1])
        reproject(
            source=rasterio.band(ds, band),
            destination=out,
            src_nodata=ds.nodata,
            dst_transform=grid.transform,
            dst_crs=grid.crs.to_wkt(),
            dst_nodata=nodata,
            resampling=Resampling.nearest,
        )
        return out


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {parent}: {exc}") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _profile(grid: Grid, count: int, dtype: str, nodata: float | None, tiled: bool = True) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "crs": grid.crs.to_wkt(),
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
    }
    if tiled:
        profile.update(tiled=True, blockxsize=512, blockysize=512)
    return profile


class RasterWriter:
    """Write a raster window by window, then publish it as a COG under its final name.

    Use as a context manager; on error nothing is left at ``path``::

        with RasterWriter(path, grid, count=1, dtype="uint8", nodata=255) as w:
            for win in grid.windows(512):
                w.write(tile, win)
    """

    def __init__(
        self,
        path: str | Path,
        grid: Grid,
        count: int,
        dtype: str,
        nodata: float | None,
        descriptions: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
        cog: bool = True,
    ) -> None:
        self.path = Path(path)
        self.grid = grid
        self.count = count
        self.dtype = dtype
        self.nodata = nodata
        self.descriptions = descriptions
        self.tags = tags or {}
        self.cog = cog
        self._stack = contextlib.ExitStack()
        self._ds: Any = None

    def __enter__(self) -> RasterWriter:
        final = self._stack.enter_context(atomic_path(self.path))
        self._final_tmp = final
        self._work = final.with_name(final.name + ".gtiff") if self.cog else final
        try:
            self._ds = rasterio.open(self._work, "w", **_profile(self.grid, self.count, self.dtype, self.nodata))
        except Exception as exc:
            self._stack.close()
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        if self.descriptions:
            for i, d in enumerate(self.descriptions, start=1):
                self._ds.set_band_description(i, d)
        if self.tags:
            self._ds.update_tags(**self.tags)
        return self

    def write(self, array: np.ndarray, window: Window | None = None) -> None:
        """Write a (bands, rows, cols) or (rows, cols) array at ``window`` (whole grid if None)."""
        if array.ndim == 2:
            array = array[np.newaxis]
        self._ds.write(array.astype(self.dtype, copy=False), window=_to_rio_window(window))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._ds.close()
            if exc_type is None and self.cog:
                try:
                    rasterio.shutil.copy(self._work, self._final_tmp, driver="COG", **cog_options(self.dtype))
                finally:
                    Path(self._work).unlink(missing_ok=True)
            elif self.cog:
                Path(self._work).unlink(missing_ok=True)
        finally:
            if exc_type is None:
                self._stack.close()
            else:
                self._stack.__exit__(exc_type, exc, tb)


def write_raster(
    path: str | Path,
    array: np.ndarray,
    grid: Grid,
    nodata: float | None,
    descriptions: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a whole in-memory array (bands, rows, cols) or (rows, cols) as a COG, atomically."""
    count = 1 if array.ndim == 2 else array.shape[0]
    with RasterWriter(path, grid, count, str(array.dtype), nodata, descriptions, tags) as w:
        w.write(array)
    return Path(path)
