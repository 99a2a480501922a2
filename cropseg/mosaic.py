"""Many scenes: one prediction per scene, or one mosaic on a common grid.

:func:`expand_inputs` turns what the user gave (image files, scene folders, folders of scene
folders, an acquisition's ``manifest.json`` listing ``scenes``) into scene paths.
:func:`predict_many` predicts them all in one stream of tiles (:mod:`cropseg.streaming`, so a Dask
cluster stays busy across scene boundaries) and either writes one COG per scene or mosaics them.

Mosaic rule (overlapping scenes): every scene is first predicted on its own grid. The mosaic grid
takes the CRS, pixel size and pixel lattice of the first scene and covers the union of all scenes.
Scenes are ranked by their UDM2 clear fraction (the share of the scene's image-data pixels that the
UDM2 marks usable: clear, and not cloud, shadow, snow or haze; 1.0 for a scene without a UDM2), best
first, ties kept in input order. Each mosaic pixel takes its value from the best-ranked scene that
has a valid prediction (0 or 1) there; a pixel that is cloudy or outside the best scene falls
through to the next one; 255 where no scene has one. Scenes in another CRS or on another lattice are
resampled with nearest neighbour. The mosaic is built window by window, never whole.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window as RioWindow

from cropseg.config import Config
from cropseg.errors import InputError, InputFileNotFoundError, InvalidRasterError
from cropseg.grid import Grid, Window
from cropseg.label import NODATA
from cropseg.manifest import read_manifest
from cropseg.models import TrainedModel, load_model
from cropseg.predict import predict_window, with_refinement
from cropseg.progress import ProgressCallback, report
from cropseg.scene import ProductChoice, find_scene_files, open_scene
from cropseg.streaming import (
    Execution,
    JobResult,
    PredictJob,
    job_fingerprint,
    model_halo,
    open_work_tiff,
    partial_folder,
    predict_jobs,
    publish_cog,
    write_block,
)
from cropseg.tiling import OUT_BLOCK, plan_tiles, tile_shape

MOSAIC_RULE = "best UDM2 clear fraction first; per pixel the best scene with a valid prediction"


def _is_scene(folder: Path) -> bool:
    try:
        find_scene_files(folder)
    except InputError:
        return False
    return True


def _from_manifest(manifest_dir: Path, manifest: dict[str, Any]) -> list[Path] | None:
    scenes = manifest.get("scenes")
    if isinstance(scenes, list) and scenes and all(isinstance(s, str) for s in scenes):
        paths = [(manifest_dir / s).resolve() if s != "." else manifest_dir for s in scenes]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise InputFileNotFoundError(
                f"{manifest_dir / 'manifest.json'} lists scenes that do not exist: {', '.join(missing)}"
            )
        return paths
    return None


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Scene paths (image files or scene folders) from what the user named.

    Each input may be an image file, a scene folder, an acquisition folder or ``manifest.json``
    whose manifest lists ``scenes`` (sub-folders), or a folder of scene folders.

    Raises:
        InputFileNotFoundError: an input does not exist, or a folder holds no scene.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputFileNotFoundError(f"image {path} does not exist; check the path")
        if path.is_file() and path.suffix.lower() == ".json":
            try:
                manifest = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{path} is not a readable manifest ({exc})") from exc
            listed = _from_manifest(path.parent, manifest) if isinstance(manifest, dict) else None
            if listed is None and isinstance(manifest, dict) and "image" in manifest:
                listed = [path.parent]
            if listed is None:
                raise InputError(f"{path} names neither scenes nor an image; give scene folders or image files")
            out.extend(listed)
        elif path.is_dir():
            manifest = read_manifest(path)
            listed = _from_manifest(path, manifest) if manifest else None
            if listed is not None:
                out.extend(listed)
            elif _is_scene(path):
                out.append(path)
            else:
                subs = sorted(p for p in path.iterdir() if p.is_dir() and _is_scene(p))
                if not subs:
                    raise InputFileNotFoundError(
                        f"{path} holds no scene (an image *.tif, or sub-folders with one); give --image FILE"
                    )
                out.extend(subs)
        else:
            out.append(path)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def scene_name(path: Path) -> str:
    """A short name for a scene input: the folder's name, or the image file's stem."""
    return path.resolve().name if path.is_dir() else path.stem


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        name, n = scene_name(p), 2
        while name in names:
            name, n = f"{scene_name(p)}_{n}", n + 1
        names.append(name)
    return names


def mosaic_grid(grids: Sequence[Grid]) -> Grid:
    """The grid covering every grid: CRS, pixel size and pixel lattice of the first one."""
    first = grids[0]
    t = first.transform
    xres, yres = first.res
    left, bottom, right, top = first.bounds
    for g in grids[1:]:
        b = g.bounds
        if not g.crs.equals(first.crs):
            b = Transformer.from_crs(g.crs, first.crs, always_xy=True).transform_bounds(*b, densify_pts=21)
        left, bottom, right, top = min(left, b[0]), min(bottom, b[1]), max(right, b[2]), max(top, b[3])
    # snap outwards onto the first grid's lattice
    c0 = int(np.floor((left - t.c) / xres + 1e-9))
    c1 = int(np.ceil((right - t.c) / xres - 1e-9))
    r0 = int(np.floor((t.f - top) / yres + 1e-9))
    r1 = int(np.ceil((t.f - bottom) / yres - 1e-9))
    transform = Affine(t.a, 0.0, t.c + c0 * xres, 0.0, t.e, t.f - r0 * yres)
    return Grid(transform, first.crs, c1 - c0, r1 - r0)


def _aligned_offset(src: Grid, dst: Grid) -> tuple[int, int] | None:
    """(col, row) of ``src``'s origin on ``dst`` when both share CRS, pixel size and lattice; else None."""
    if not src.crs.equals(dst.crs) or not np.allclose(src.res, dst.res, rtol=0, atol=1e-9 * max(dst.res)):
        return None
    col = (src.transform.c - dst.transform.c) / dst.res[0]
    row = (dst.transform.f - src.transform.f) / dst.res[1]
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def _scene_window(ds: Any, src: Grid, dst: Grid, window: Window) -> np.ndarray | None:
    """The prediction ``ds`` (on ``src``) over ``window`` of ``dst``, nearest neighbour; None if outside."""
    offset = _aligned_offset(src, dst)
    if offset is not None:
        c0 = max(window.col_off, offset[0])
        r0 = max(window.row_off, offset[1])
        c1 = min(window.col_off + window.width, offset[0] + src.width)
        r1 = min(window.row_off + window.height, offset[1] + src.height)
        if c1 <= c0 or r1 <= r0:
            return None
        out = np.full((window.height, window.width), NODATA, np.uint8)
        part = ds.read(1, window=RioWindow(c0 - offset[0], r0 - offset[1], c1 - c0, r1 - r0))
        out[r0 - window.row_off : r1 - window.row_off, c0 - window.col_off : c1 - window.col_off] = part
        return out
    wgrid = dst.window_grid(window)
    wb = wgrid.bounds
    sb = Transformer.from_crs(src.crs, dst.crs, always_xy=True).transform_bounds(*src.bounds, densify_pts=21)
    if sb[2] <= wb[0] or sb[0] >= wb[2] or sb[3] <= wb[1] or sb[1] >= wb[3]:
        return None
    out = np.full((window.height, window.width), NODATA, np.uint8)
    reproject(
        source=rasterio.band(ds, 1), destination=out, src_nodata=NODATA, dst_transform=wgrid.transform,
        dst_crs=dst.crs.to_wkt(), dst_nodata=NODATA, resampling=Resampling.nearest,
    )
    return out


@dataclass
class ManyResult:
    """What :func:`predict_many` wrote.

    Attributes:
        outputs: the COGs written (one per scene, or the mosaic).
        scenes: the scene inputs, in input order.
        results: per scene, its prediction's counts (``clear_fraction`` ranks a mosaic).
        mosaic: the mosaic COG, when one was made.
        order: with a mosaic, the scene indices from best to worst clear fraction.
    """

    outputs: list[Path]
    scenes: list[Path]
    results: list[JobResult] = field(default_factory=list)
    mosaic: Path | None = None
    order: list[int] = field(default_factory=list)


def build_mosaic(
    predictions: Sequence[Path],
    clear_fractions: Sequence[float],
    out: Path,
    *,
    staging: Path,
    tags: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> list[int]:
    """Mosaic per-scene prediction COGs into ``out`` by the documented rule; return the rank order.

    Args:
        predictions: per-scene prediction rasters (uint8, 255 nodata), in input order.
        clear_fractions: each scene's UDM2 clear fraction.
        out: the mosaic COG (written atomically).
        staging: a scratch folder beside ``out`` (same filesystem).
        tags: extra GeoTIFF tags.
        progress: called as ``progress("Mosaicking", done, total)``.
    """
    order = sorted(range(len(predictions)), key=lambda i: (-clear_fractions[i], i))
    dss = [rasterio.open(p) for p in predictions]
    try:
        grids = [Grid(ds.transform, _crs(ds), ds.width, ds.height) for ds in dss]
        grid = mosaic_grid(grids)
        staging.mkdir(parents=True, exist_ok=True)
        names = {**(tags or {}), "CROPSEG_MOSAIC_RULE": MOSAIC_RULE,
                 "CROPSEG_MOSAIC_ORDER": ",".join(predictions[i].stem for i in order)}
        work = staging / "mosaic-work.tif"
        windows = plan_tiles(grid.shape, OUT_BLOCK)
        ds_out = open_work_tiff(work, grid, ("crop",), names)
        try:
            for n, tile in enumerate(windows):
                report(progress, "Mosaicking", n, len(windows))
                win = tile.core
                acc = np.full((win.height, win.width), NODATA, np.uint8)
                for i in order:
                    part = _scene_window(dss[i], grids[i], grid, win)
                    if part is None:
                        continue
                    fill = (acc == NODATA) & (part != NODATA)
                    acc[fill] = part[fill]
                    if not (acc == NODATA).any():
                        break
                write_block(ds_out, acc, win)
            report(progress, "Mosaicking", len(windows), len(windows))
        finally:
            ds_out.close()
        publish_cog(work, out, staging / "mosaic-cog.tif")
        work.unlink(missing_ok=True)
    finally:
        for ds in dss:
            ds.close()
    return order


def _crs(ds: Any) -> Any:
    from pyproj import CRS

    if ds.crs is None:
        raise InvalidRasterError(f"{ds.name} has no CRS")
    return CRS.from_user_input(ds.crs.to_wkt())


def predict_many(
    model: str | Path | TrainedModel,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    mosaic: bool = False,
    metadata: str | Path | None = None,
    udm2: str | Path | None = None,
    product: ProductChoice = "auto",
    config: Config | None = None,
    execution: Execution | None = None,
    resume: bool = True,
    tile_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> ManyResult:
    """Predict several scenes: one COG per scene in the folder ``out``, or one mosaic COG ``out``.

    One scene without ``mosaic`` writes the file ``out``, like :func:`cropseg.predict.predict_from_files`.

    Args:
        model: a model directory or a loaded model.
        inputs: image files, scene folders, acquisition folders / manifests (see :func:`expand_inputs`).
        out: the output COG (one scene, or ``mosaic``), else a folder for ``<scene name>.tif`` files.
        mosaic: mosaic all scenes into ``out`` (see the module docstring for the overlap rule).
        metadata: metadata XML (one scene only).
        udm2: UDM2 (one scene only).
        product: how DNs become reflectance (see :func:`cropseg.scene.open_scene`).
        config: tunables (tile size, haze masking).
        execution: threads, processes or Dask.
        resume: resume a killed run's journal(s).
        tile_size: tile side (default: the config's).
        progress: progress callback.
    """
    cfg = config or Config()
    paths = expand_inputs(inputs)
    if not paths:
        raise InputError("no scene given; pass --image at least once")
    if len(paths) > 1 and (metadata is not None or udm2 is not None):
        raise InputError("--metadata and --udm2 name the files of one scene; with several scenes they are found "
                         "beside each image")
    trained = with_refinement(model if isinstance(model, TrainedModel) else load_model(model), cfg.predict)
    scenes = [
        open_scene(p, metadata, udm2, product=product, mask_haze=cfg.radiometry.mask_haze) for p in paths
    ]
    bands = len(trained.features.bands)
    for s in scenes:
        if s.band_count != bands:
            raise InvalidRasterError(
                f"the model was trained on {bands} bands but {s.image} has {s.band_count}; "
                "give images with the same bands"
            )
    size = tile_size or cfg.predict.tile_size
    out = Path(out)
    tags = {"CROPSEG_CODING": "1=crop 0=non-crop 255=nodata", "CROPSEG_MODEL": str(trained.card.get("model", ""))}
    names = _unique_names(paths)
    if not mosaic:
        if len(scenes) == 1:
            targets = [out]
        else:
            if out.suffix.lower() in (".tif", ".tiff"):
                raise InputError(f"{len(scenes)} scenes give {len(scenes)} predictions: make --out a folder, "
                                 "or pass --mosaic for one mosaic")
            targets = [out / f"{name}.tif" for name in names]
        jobs = [PredictJob(s, t) for s, t in zip(scenes, targets, strict=True)]
        written = predict_jobs(trained, jobs, predict_window, tile_size=size, execution=execution, resume=resume,
                               progress=progress, tags=tags)
        return ManyResult(outputs=targets, scenes=paths, results=written)

    # mosaic: per-scene predictions (each with its own journal) in OUT.partial/, then the mosaic
    folder = partial_folder(out)
    scene_dir = folder / "scenes"
    halo, stride = model_halo(trained)
    plan = {
        "format": "cropseg-mosaic-journal",
        "scenes": [
            job_fingerprint(trained, s, tile_shape(size, s.grid.shape, s.info.block_shape, stride=stride), halo,
                            predict_window)
            for s in scenes
        ],
    }
    plan_path = folder / "mosaic-plan.json"
    plan_json = json.loads(json.dumps(plan))
    if folder.exists() and not (resume and plan_path.is_file() and _same(plan_path, plan_json)):
        shutil.rmtree(folder)
    scene_dir.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan_json, indent=1) + "\n")
    targets = [scene_dir / f"{i:03d}_{name}.tif" for i, name in enumerate(names)]
    done = {i: json.loads((t.with_suffix(".json")).read_text()) for i, t in enumerate(targets)
            if t.exists() and t.with_suffix(".json").exists()}
    todo = [i for i in range(len(scenes)) if i not in done]
    results: list[JobResult | None] = [None] * len(scenes)
    for i, rec in done.items():
        results[i] = JobResult(out=targets[i], **rec)

    def record(k: int, res: JobResult) -> None:
        # a finished scene's counts, so that a resumed mosaic skips it
        targets[todo[k]].with_suffix(".json").write_text(json.dumps({
            "tiles": res.tiles, "resumed": res.resumed, "data_pixels": res.data_pixels,
            "valid_pixels": res.valid_pixels, "crop_pixels": res.crop_pixels,
        }))

    computed = predict_jobs(trained, [PredictJob(scenes[i], targets[i]) for i in todo], predict_window,
                            tile_size=size, execution=execution, resume=resume, progress=progress, tags=tags,
                            on_done=record)
    for i, res in zip(todo, computed, strict=True):
        results[i] = res
    final = [r for r in results if r is not None]
    fractions = [r.clear_fraction for r in final]
    order = build_mosaic(targets, fractions, out, staging=folder, tags=tags, progress=progress)
    shutil.rmtree(folder, ignore_errors=True)
    return ManyResult(outputs=[out], scenes=paths, results=final, mosaic=out, order=order)


def _same(path: Path, plan: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(path.read_text()) == plan)
    except (OSError, json.JSONDecodeError):
        return False
