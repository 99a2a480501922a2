"""The streaming prediction engine: scenes of any size, window by window, flat in memory, resumable.

:func:`predict_jobs` predicts one or many scenes (:class:`PredictJob`) with a window function
(:func:`cropseg.predict.predict_window`). For every tile of a block-aligned plan
(:mod:`cropseg.tiling`) a worker reads the tile's window plus the model's halo, converts DNs to
reflectance, masks nodata and unusable UDM2 pixels, computes features, classifies and keeps the
centre. Tiles go down strips of the scene (:func:`cropseg.tiling.stream_order`), so the blocks a tile
shares with its neighbours are still in GDAL's block cache when those are read, however wide the
scene. Workers are threads, processes or Dask tasks (:class:`Execution`); the calling thread
only writes finished tiles. At most ``inflight`` tiles are in the air at once (a bounded queue),
so memory does not grow with the scene.

Resume journal: while ``OUT`` is being written, ``OUT.partial/`` holds ``plan.json`` (a
fingerprint of the model, the scene files and the plan), one compressed record per finished tile
in ``tiles/`` (written atomically), and the GeoTIFF being filled. A killed run leaves the folder;
the next run with the same inputs (and ``resume=True``) copies the recorded tiles and computes only
the others. When every tile is in, the COG is built inside the folder and renamed onto ``OUT``
(atomic), and the folder is removed. A run with other inputs, or ``resume=False``, starts over.

Determinism: a tile's output depends only on the tile and the inputs, never on the worker that ran
it or the order tiles finish in, so local, multi-process, Dask and resumed runs write byte-identical
files.

This module is an I/O edge beside :mod:`cropseg.raster_io`: it keeps rasterio datasets open per
worker thread (opening a file per window would discard GDAL's block cache) and reads windows that
reach past the raster with :func:`cropseg.raster_io.read_padded`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import dataclasses
import fcntl
import io
import json
import multiprocessing
import os
import shutil
import sys
import threading
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.shutil
import sklearn
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window as RioWindow

from cropseg import __version__, accel
from cropseg.accel import Accelerate
from cropseg.errors import InputError, OutputError
from cropseg.grid import Grid, Window
from cropseg.label import NODATA
from cropseg.progress import ProgressCallback, report
from cropseg.radiometry import to_reflectance, udm2_usable
from cropseg.raster_io import CLASS_COG_OPTIONS, read_padded
from cropseg.scene import Scene
from cropseg.tiling import (
    OUT_BLOCK,
    Tile,
    blocks_of,
    inner_slices,
    overlap,
    plan_tiles,
    round_up,
    stream_order,
    tile_shape,
)

Scheduler = Literal["local", "dask"]
LocalMode = Literal["threads", "processes"]
#: ``window_fn(trained, reflectance, valid, halo) -> uint8 (rows, cols)``, as :func:`cropseg.predict.predict_window`.
WindowFn = Callable[[Any, np.ndarray, np.ndarray, int], np.ndarray]

JOURNAL_FORMAT = "cropseg-predict-journal"
JOURNAL_VERSION = 1
#: GDAL block cache (MB) while streaming: enough for a few rows of blocks, small enough to stay flat.
GDAL_CACHE_MB = 256
#: scikit-learn's chunk budget (MB) per tile (its default, 1 GiB, would set the peak memory of a KNN run).
SKLEARN_WORKING_MB = 64
_MAX_HANDLES = 8
_LOCAL = threading.local()


@dataclass(frozen=True)
class Execution:
    """Where tiles run.

    Attributes:
        scheduler: ``local`` (this machine) or ``dask`` (a Dask cluster).
        workers: local threads or processes (default: the CPU count); with ``dask`` and no address,
            the workers of the LocalCluster started for the run.
        local_mode: ``threads`` or ``processes`` for the local scheduler.
        dask_address: scheduler address (``tcp://HOST:8786``) of an existing cluster; None starts a
            LocalCluster for the run.
        inflight: tiles submitted but not yet written, at most (default: 2 per worker thread).
    """

    scheduler: Scheduler = "local"
    workers: int | None = None
    local_mode: LocalMode = "threads"
    dask_address: str | None = None
    inflight: int | None = None

    def __post_init__(self) -> None:
        if self.scheduler not in ("local", "dask"):
            raise InputError(f"unknown scheduler {self.scheduler!r}; choose local or dask")
        if self.local_mode not in ("threads", "processes"):
            raise InputError(f"unknown local mode {self.local_mode!r}; choose threads or processes")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        if self.dask_address is not None and self.scheduler != "dask":
            raise InputError("a Dask address needs the dask scheduler (--scheduler dask)")

    @property
    def n_workers(self) -> int:
        """Local workers."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class PredictJob:
    """One scene to predict into one output file."""

    scene: Scene
    out: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))


@dataclass
class JobResult:
    """What a finished job wrote and counted.

    Attributes:
        out: the prediction COG.
        tiles: tiles in the plan.
        resumed: tiles taken from a previous run's journal.
        data_pixels: pixels holding image data.
        valid_pixels: pixels classified (data and, with a UDM2, usable).
        crop_pixels: pixels classified crop.
    """

    out: Path
    tiles: int = 0
    resumed: int = 0
    data_pixels: int = 0
    valid_pixels: int = 0
    crop_pixels: int = 0

    @property
    def clear_fraction(self) -> float:
        """Share of the image's data pixels that are usable (1.0 without a UDM2 or without data)."""
        return self.valid_pixels / self.data_pixels if self.data_pixels else 0.0


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs, sent to each worker once."""

    trained: Any
    window_fn: WindowFn
    scenes: tuple[Scene, ...]
    halo: int


TileOutput = tuple[np.ndarray, int, int, int]


# ----------------------------------------------------------------------------------------------
# worker side: open datasets per thread, read windows, predict one tile


def _dataset(path: Path) -> Any:
    """An open rasterio dataset for ``path``, kept per thread (LRU) and reopened if the file changed."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    cache: OrderedDict[tuple[str, int, int], Any] | None = getattr(_LOCAL, "handles", None)
    if cache is None:
        cache = OrderedDict()
        _LOCAL.handles = cache
    ds = cache.get(key)
    if ds is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
        cache[key] = ds
        while len(cache) > _MAX_HANDLES:
            cache.popitem(last=False)[1].close()
    else:
        cache.move_to_end(key)
    return ds


def close_thread_datasets() -> None:
    """Close the datasets this thread keeps open."""
    cache = getattr(_LOCAL, "handles", None)
    while cache:
        cache.popitem()[1].close()


def _rio(window: Window) -> RioWindow:
    return RioWindow(window.col_off, window.row_off, window.width, window.height)


#: glibc ``mallopt`` settings of :func:`keep_heap_memory`: arrays up to 32 MiB (the most glibc allows) come
#: from the heap, up to 64 MiB of freed heap memory is kept for the next tile, and a worker thread's arena
#: keeps its emptied 64 MiB sub-heaps (the top pad): without it glibc unmaps a thread's second sub-heap each
#: time a tile frees it and maps a fresh one for the next tile, every page of it faulting in again.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS: dict[int, int] = {
    _M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20, _M_TOP_PAD: 64 * 2**20,
}
_MALLOC_TUNED = False
_LIBC: Any = None


def keep_heap_memory() -> bool:
    """Let glibc's malloc reuse the memory of a tile's freed arrays for the next tile (once per process).

    By default glibc gives arrays over 128 KiB their own fresh pages from the OS and hands freed
    memory back, so every tile's dozens of feature-sized temporaries page-fault anew: about a third
    of the time of the features (BENCHMARKS.md, "Throughput"). Returns whether the settings were
    made: not on other C libraries, nor when the user set ``MALLOC_*`` variables of their own.
    :func:`trim_heap` hands the memory back when a scene is done.
    """
    global _MALLOC_TUNED, _LIBC
    if _MALLOC_TUNED:
        return False
    _MALLOC_TUNED = True
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt, _ = libc.mallopt, libc.malloc_trim  # glibc has both
    except (OSError, AttributeError):  # pragma: no cover - not glibc (e.g. musl)
        return False
    _LIBC = libc
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


def trim_heap() -> None:
    """Return the free memory :func:`keep_heap_memory` kept to the OS (glibc ``malloc_trim``).

    Called before a finished scene's COG is built, which needs memory of its own: on a 16k x 16k
    scene the kept heap was about 0.5 GiB.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def predict_tile(ctx: _Context, job: int, tile: Tile) -> TileOutput:
    """Predict one tile of scene ``job``: (uint8 core array, data pixels, valid pixels, crop pixels)."""
    keep_heap_memory()  # once per process: threads, processes and Dask workers all come through here
    scene = ctx.scenes[job]
    image = _dataset(scene.image)
    core = tile.core
    data = np.asarray(image.dataset_mask(window=_rio(core)) > 0)
    valid = data.copy()
    if scene.udm2 is not None and valid.any():
        valid &= udm2_usable(np.asarray(_dataset(scene.udm2).read(window=_rio(core))), scene.mask_haze)
    if not valid.any():
        return np.full((core.height, core.width), NODATA, np.uint8), int(data.sum()), 0, 0
    refl = to_reflectance(read_padded(image, tile.read), scene.product, scene.coefficients)
    with sklearn.config_context(working_memory=SKLEARN_WORKING_MB):
        pred = np.asarray(ctx.window_fn(ctx.trained, refl, valid, ctx.halo), dtype=np.uint8)
    return pred, int(data.sum()), int(valid.sum()), int((pred == 1).sum())


_PROCESS_CTX: _Context | None = None


def _init_process(ctx: _Context) -> None:
    global _PROCESS_CTX
    _PROCESS_CTX = ctx


def _process_tile(job: int, tile: Tile) -> TileOutput:
    if _PROCESS_CTX is None:  # pragma: no cover - the pool initializer always runs first
        raise RuntimeError("worker process not initialised")
    return predict_tile(_PROCESS_CTX, job, tile)


# ----------------------------------------------------------------------------------------------
# the resume journal and the output being filled


def partial_folder(out: str | Path) -> Path:
    """The journal folder of an output: ``OUT.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _file_id(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def job_fingerprint(
    trained: Any, scene: Scene, tile: tuple[int, int], halo: int, window_fn: WindowFn
) -> dict[str, Any]:
    """What must not change for a journal to be resumed: the model, the scene's files and the plan."""
    card = getattr(trained, "card", {}) or {}
    grid = scene.grid
    return {
        "format": JOURNAL_FORMAT,
        "version": JOURNAL_VERSION,
        "cropseg": __version__,
        "model": {
            "kind": card.get("model"),
            "engine": type(getattr(trained, "model", None)).__name__,
            "weights": (card.get("weights") or {}).get("sha256"),
            "threshold": float(getattr(trained, "threshold", 0.5)),
            "features": trained.features.to_dict() if hasattr(trained, "features") else None,
            "refine": dataclasses.asdict(refine) if (refine := getattr(trained, "refine", None)) else None,
        },
        "window_fn": f"{window_fn.__module__}.{window_fn.__qualname__}",
        "image": _file_id(scene.image),
        "udm2": _file_id(scene.udm2),
        "product": scene.product,
        "coefficients": list(scene.coefficients) if scene.coefficients else None,
        "mask_haze": scene.mask_haze,
        "grid": [grid.width, grid.height, list(grid.transform)[:6], grid.crs.to_wkt()],
        "tile": list(tile),
        "halo": halo,
    }


def open_work_tiff(path: Path, grid: Grid, descriptions: Sequence[str] = (), tags: dict[str, str] | None = None) -> Any:
    """Create a tiled uint8 GeoTIFF (nodata 255, 512 px blocks) to fill window by window; return it open.

    Deflated at level 1: it is a working file, compressed again when published as a COG.
    """
    ds = rasterio.open(
        path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8",
        crs=grid.crs.to_wkt(), transform=grid.transform, nodata=NODATA, compress="deflate", zlevel=1,
        BIGTIFF="IF_SAFER", tiled=True, blockxsize=OUT_BLOCK, blockysize=OUT_BLOCK,
    )
    for i, d in enumerate(descriptions, start=1):
        ds.set_band_description(i, d)
    if tags:
        ds.update_tags(**tags)
    return ds


def journal_record(**arrays: np.ndarray) -> bytes:
    """An ``.npz`` of ``arrays`` (what ``np.load`` reads), deflated at level 1.

    ``np.savez_compressed`` deflates at zlib's default level 6, about three times the CPU for a
    class mask that level 1 already shrinks well; a journal record is written for every tile, on
    the thread that writes the output.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def gdal_cache() -> Any:
    """A rasterio environment with a GDAL block cache of :data:`GDAL_CACHE_MB` (process-wide while it lasts).

    rasterio passes an integer ``GDAL_CACHEMAX`` to GDAL as bytes, so the size is given in bytes: a tile read
    with its halo spans up to nine blocks, and without the cache every block is decompressed again for
    each tile that touches it (BENCHMARKS.md, "Throughput").
    """
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20)


def write_block(ds: Any, array: np.ndarray, window: Window) -> None:
    """Write a (rows, cols) array at ``window`` of a dataset from :func:`open_work_tiff`."""
    ds.write(array[np.newaxis], window=_rio(window))


def publish_cog(work: Path, out: Path, staging: Path) -> Path:
    """Copy the finished class map ``work`` to a COG at ``staging`` (beside ``out``), then rename onto ``out``."""
    with gdal_cache():
        rasterio.shutil.copy(work, staging, driver="COG", **CLASS_COG_OPTIONS)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    return out


class _Output:
    """One job's output: its journal folder, the GeoTIFF being filled and the counts so far."""

    def __init__(self, job: PredictJob, tiles: list[Tile], fingerprint: dict[str, Any], resume: bool,
                 descriptions: Sequence[str], tags: dict[str, str]) -> None:
        self.job = job
        self.tiles = tiles
        self.folder = partial_folder(job.out)
        self.tiles_dir = self.folder / "tiles"
        self.fingerprint = fingerprint
        self.resume = resume
        self.descriptions = descriptions
        self.tags = tags
        self.result = JobResult(out=job.out, tiles=len(tiles))
        self.remaining = len(tiles)
        self._ds: Any = None
        self._lock_fd: int | None = None
        # output blocks being filled: (block row, block col) -> (pixels, pixels still missing)
        self._blocks: dict[tuple[int, int], tuple[np.ndarray, int]] = {}

    def open(self) -> list[Tile]:
        """Prepare the journal and the GeoTIFF; copy recorded tiles in; return the tiles still to do."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock()
            plan_path = self.folder / "plan.json"
            done: set[int] = set()
            if self.resume and plan_path.is_file():
                try:
                    same = json.loads(plan_path.read_text()) == json.loads(json.dumps(self.fingerprint))
                except (OSError, json.JSONDecodeError):
                    same = False
                if same and self.tiles_dir.is_dir():
                    done = {int(p.stem) for p in self.tiles_dir.glob("*.npz") if p.stem.isdigit()}
            if not done:
                for child in self.folder.iterdir():
                    if child.name != ".lock":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
                self.tiles_dir.mkdir()
                plan_path.write_text(json.dumps(self.fingerprint, indent=1) + "\n")
            for stale in self.folder.glob("*.tif"):
                stale.unlink()
            for stale in self.tiles_dir.glob(".*"):
                stale.unlink()
            self._ds = open_work_tiff(self.folder / "work.tif", self.job.scene.grid, self.descriptions, self.tags)
        except OSError as exc:
            self.release()
            raise OutputError(f"cannot write {self.job.out} (journal {self.folder}): {exc}") from exc
        todo: list[Tile] = []
        for tile in self.tiles:
            if tile.index in done:
                try:
                    with np.load(self.tiles_dir / f"{tile.index:06d}.npz") as rec:
                        pred, stats = rec["pred"], rec["stats"]
                except (OSError, ValueError, KeyError):
                    todo.append(tile)
                    continue
                self._write(tile, (pred, int(stats[0]), int(stats[1]), int(stats[2])), record=False)
                self.result.resumed += 1
            else:
                todo.append(tile)
        return todo

    def _lock(self) -> None:
        fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(
                f"another cropseg run is writing {self.job.out} (its journal {self.folder} is locked); "
                "wait for it to finish or stop it"
            ) from None
        self._lock_fd = fd

    def release(self) -> None:
        """Close the GeoTIFF and drop the lock (the journal stays for a later resume)."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _put(self, window: Window, pred: np.ndarray) -> None:
        """Copy a window into the output blocks it touches; write each block once, when it is complete.

        GDAL never sees a partial block, so it never reads one back, re-compresses or rewrites it.
        """
        for block in blocks_of(window, self.job.scene.grid.shape, OUT_BLOCK):
            part = overlap(window, block)
            if part is None:  # pragma: no cover - blocks_of yields touched blocks only
                continue
            if part == block:
                self._ds.write(pred[inner_slices(window, part)][np.newaxis], window=_rio(block))
                continue
            key = (block.row_off, block.col_off)
            buf, missing = self._blocks.get(key) or (
                np.full((block.height, block.width), NODATA, np.uint8), block.height * block.width
            )
            buf[inner_slices(block, part)] = pred[inner_slices(window, part)]
            missing -= part.height * part.width
            if missing:
                self._blocks[key] = (buf, missing)
            else:
                self._blocks.pop(key, None)
                self._ds.write(buf[np.newaxis], window=_rio(block))

    def _write(self, tile: Tile, output: TileOutput, record: bool = True) -> None:
        pred, n_data, n_valid, n_crop = output
        self._put(tile.core, pred)
        if record:
            tmp = self.tiles_dir / f".{tile.index:06d}.tmp"
            tmp.write_bytes(journal_record(pred=pred, stats=np.asarray([n_data, n_valid, n_crop], np.int64)))
            os.replace(tmp, self.tiles_dir / f"{tile.index:06d}.npz")
        self.result.data_pixels += n_data
        self.result.valid_pixels += n_valid
        self.result.crop_pixels += n_crop
        self.remaining -= 1

    def write(self, tile: Tile, output: TileOutput) -> None:
        """Write a computed tile and record it in the journal."""
        try:
            self._write(tile, output)
        except OSError as exc:
            raise OutputError(f"cannot write {self.job.out}: {exc}") from exc

    def publish(self) -> JobResult:
        """Close the GeoTIFF, build the COG in the journal folder, rename it onto the output, clean up."""
        try:
            self._ds.close()
            self._ds = None
            trim_heap()
            publish_cog(self.folder / "work.tif", self.job.out, self.folder / "cog.tif")
        except OSError as exc:
            raise OutputError(f"cannot write {self.job.out}: {exc}") from exc
        finally:
            self.release()
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.result


# ----------------------------------------------------------------------------------------------
# executors: a bounded stream of (job, tile) tasks through threads, processes or Dask


def _bounded(submit: Callable[[int, Tile], Any], wait_any: Callable[[set[Any]], set[Any]],
             tasks: Iterator[tuple[int, Tile]], inflight: int) -> Iterator[tuple[int, Tile, Any]]:
    """Yield (job, tile, future) as futures finish, keeping at most ``inflight`` submitted."""
    pending: dict[Any, tuple[int, Tile]] = {}

    def fill() -> None:
        while len(pending) < inflight:
            task = next(tasks, None)
            if task is None:
                return
            pending[submit(*task)] = task

    fill()
    while pending:
        for fut in wait_any(set(pending)):
            job, tile = pending.pop(fut)
            yield job, tile, fut
        fill()


def _cf_wait(futures: set[Any]) -> set[Any]:
    done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
    return set(done)


@contextlib.contextmanager
def _local_stream(ctx: _Context, execution: Execution, tasks: Iterator[tuple[int, Tile]]
                  ) -> Iterator[Iterator[tuple[int, Tile, TileOutput]]]:
    workers = execution.n_workers
    inflight = execution.inflight or 2 * workers
    pool: cf.Executor
    submit: Callable[[int, Tile], Any]
    if execution.local_mode == "processes":
        mp = multiprocessing.get_context("forkserver")
        # the fork server imports the engine once; workers fork from it with rasterio, numpy and the models loaded
        mp.set_forkserver_preload(["cropseg.streaming", "cropseg.predict"])
        pool = cf.ProcessPoolExecutor(workers, mp_context=mp, initializer=_init_process, initargs=(ctx,))

        def submit(job: int, tile: Tile) -> Any:
            return pool.submit(_process_tile, job, tile)
    else:
        pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="cropseg-tile")

        def submit(job: int, tile: Tile) -> Any:
            return pool.submit(predict_tile, ctx, job, tile)

    def results() -> Iterator[tuple[int, Tile, TileOutput]]:
        for job, tile, fut in _bounded(submit, _cf_wait, tasks, inflight):
            yield job, tile, fut.result()

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _dask_client(execution: Execution) -> tuple[Any, Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("the dask scheduler needs Dask distributed: pip install 'cropseg[dask]'") from None
    if execution.dask_address:
        try:
            return Client(execution.dask_address, timeout="30s"), None  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise InputError(
                f"cannot reach the Dask scheduler at {execution.dask_address} ({exc}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS`, or leave --dask-address out"
            ) from exc
    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=execution.n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
        worker_dashboard_address=None, host="127.0.0.1", silence_logs=40,
    )
    return Client(cluster), cluster  # type: ignore[no-untyped-call]


def _dask_tile(ctx: _Context, job: int, tile: Tile) -> TileOutput:
    return predict_tile(ctx, job, tile)


@contextlib.contextmanager
def _dask_stream(ctx: _Context, execution: Execution, tasks: Iterator[tuple[int, Tile]]
                 ) -> Iterator[Iterator[tuple[int, Tile, TileOutput]]]:
    from distributed import wait

    client, cluster = _dask_client(execution)
    try:
        threads = sum(client.nthreads().values()) or 1
        inflight = execution.inflight or 2 * threads
        shared = client.scatter(ctx, broadcast=True, hash=False)

        def submit(job: int, tile: Tile) -> Any:
            return client.submit(_dask_tile, shared, job, tile, pure=False)

        def wait_any(futures: set[Any]) -> set[Any]:
            return set(wait(list(futures), return_when="FIRST_COMPLETED").done)  # type: ignore[no-untyped-call]

        def results() -> Iterator[tuple[int, Tile, TileOutput]]:
            for job, tile, fut in _bounded(submit, wait_any, tasks, inflight):
                out: TileOutput = fut.result()
                fut.release()
                yield job, tile, out

        yield results()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------------------------
# the driver


def model_halo(trained: Any) -> tuple[int, int]:
    """(halo, stride) a model needs: its features' halo, or an image model's receptive field, and its refinement's."""
    halo = int(trained.features.halo) if hasattr(trained, "features") else 0
    model = getattr(trained, "model", None)
    halo = max(halo, int(getattr(trained, "halo", 0) or 0), int(getattr(model, "halo", 0) or 0))
    stride = max(1, int(getattr(trained, "stride", 0) or getattr(model, "stride", 1) or 1))
    return round_up(halo, stride), stride


def predict_jobs(
    trained: Any,
    jobs: Sequence[PredictJob],
    window_fn: WindowFn,
    *,
    tile_size: int = 512,
    execution: Execution | None = None,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    descriptions: Sequence[str] = ("crop",),
    tags: dict[str, str] | None = None,
    on_done: Callable[[int, JobResult], None] | None = None,
    accelerate: Accelerate = "auto",
) -> list[JobResult]:
    """Predict every job's scene into its output COG, streaming tiles through the chosen workers.

    Args:
        trained: the model (a :class:`cropseg.models.TrainedModel`); sent to each worker once.
        jobs: scenes and their outputs; their tiles form one stream, so a cluster stays busy
            across scene boundaries.
        window_fn: classifies one window: ``window_fn(trained, reflectance, valid, halo)``.
        tile_size: wanted tile side; rounded to the files' blocks (see :func:`cropseg.tiling.tile_shape`).
        execution: threads, processes or Dask (default: local threads, one per core).
        resume: reuse a killed run's journal when its inputs match (otherwise start over).
        progress: called as ``progress("Predicting", tiles_done, tiles_total)``.
        descriptions: band descriptions of the outputs.
        tags: GeoTIFF tags of the outputs.
        on_done: called as ``on_done(job_index, result)`` once a job's COG is published.
        accelerate: compile a LightGBM model's trees (:func:`cropseg.accel.accelerate`): ``auto``,
            ``on`` or ``off``.

    Returns:
        one :class:`JobResult` per job, in order.
    """
    execution = execution or Execution()
    keep_heap_memory()  # before the worker threads allocate their first tile's arrays
    trained = accel.accelerate(trained, accelerate, sum(j.scene.grid.width * j.scene.grid.height for j in jobs))
    halo, stride = model_halo(trained)
    outs = [str(Path(j.out).resolve()) for j in jobs]
    if len(set(outs)) != len(outs):
        raise InputError("two scenes would be written to the same output; give each its own --out")
    outputs: list[_Output] = []
    for job in jobs:
        shape = job.scene.grid.shape
        tshape = tile_shape(tile_size, shape, job.scene.info.block_shape, stride=stride)
        tiles = stream_order(plan_tiles(shape, tshape, halo), job.scene.info.block_shape)
        fp = job_fingerprint(trained, job.scene, tshape, halo, window_fn)
        outputs.append(_Output(job, tiles, fp, resume, descriptions, tags or {}))
    ctx = _Context(trained, window_fn, tuple(j.scene for j in jobs), halo)
    total = sum(len(o.tiles) for o in outputs)
    done = 0
    results: list[JobResult | None] = [None] * len(jobs)
    finisher = cf.ThreadPoolExecutor(1, thread_name_prefix="cropseg-publish")
    published: list[tuple[int, cf.Future[JobResult]]] = []

    def publish(i: int) -> JobResult:
        result = outputs[i].publish()
        if on_done is not None:
            on_done(i, result)
        return result

    def finish(i: int) -> None:
        published.append((i, finisher.submit(publish, i)))

    def tasks() -> Iterator[tuple[int, Tile]]:
        nonlocal done
        for i, out in enumerate(outputs):
            todo = out.open()
            done += out.result.resumed
            report(progress, "Predicting", done, total)
            if not todo:
                finish(i)
            for tile in todo:
                yield i, tile

    stream = _dask_stream if execution.scheduler == "dask" else _local_stream
    env = gdal_cache() if threading.current_thread() is threading.main_thread() else contextlib.nullcontext()
    try:
        with env, stream(ctx, execution, tasks()) as stream_results:
            for i, tile, computed in stream_results:
                outputs[i].write(tile, computed)
                done += 1
                report(progress, "Predicting", done, total)
                if outputs[i].remaining == 0:
                    finish(i)
        for i, fut in published:
            results[i] = fut.result()
    finally:
        finisher.shutdown(wait=True)
        for out in outputs:
            out.release()
    return [r for r in results if r is not None]


__all__ = [
    "GDAL_CACHE_MB",
    "Execution",
    "JobResult",
    "PredictJob",
    "close_thread_datasets",
    "job_fingerprint",
    "model_halo",
    "open_work_tiff",
    "partial_folder",
    "predict_jobs",
    "predict_tile",
    "publish_cog",
    "write_block",
]
