"""Whole-scene throughput: prediction Mpx/s against the I/O limit, peak memory by scene size, a PSScene end to end.

Data: one procedural `cropseg synth` scene (about 2k x 2k px at 3 m, seed 3) trains the models and is
the tile from which larger scenes are made: `mirror_scene` writes a scene of any size by tiling the
synth scene with mirrored copies (so fields continue across the copies' edges) through rasterio
window writes, as a tiled (512 px) DEFLATE GeoTIFF with its UDM2, metadata XML and manifest.json,
never holding more than one 512-row band in memory. (`cropseg synth` itself renders whole arrays
and cannot make 16k x 16k scenes in 24 GiB.)

Measured, each in its own subprocess (so peak memory is the run's own; for process pools the RSS of
the whole process tree is summed, polled every 50 ms):

- `io`: the I/O limit. A plain rasterio loop reads every 512 px block of the 4-band image and its
  UDM2 and writes a uint8 band per block to a tiled GeoTIFF, then publishes it as a COG: the
  reading and writing prediction cannot avoid.
- `predict/MODEL`: the streaming engine (default threads) with the model as `cropseg predict` runs it
  (refinement as configured by default: on for rf and lgbm); `MODEL:on:raw` without the refinement.
- `predict+polygons/MODEL` (PSScene size only): prediction, then `polygonize_file`.

This VM's speed drifts by 10 to 25 % from minute to minute, so each row on a scene under
``--repeat-below`` Mpx is run ``--repeat`` times (one after another) and reported
by its median run, with the range of its runs. Ratios (I/O limit Mpx/s / prediction Mpx/s) are
between medians of the same run. Reproduce:

    python benchmarks/throughput.py --workdir /tmp/cropseg-throughput \
        [--models knn,lgbm] [--sizes 2048,8192,16384] [--size-model lgbm] [--psscene 9000x4800] [--modes threads] \
        [--repeat 3] [--repeat-below 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def base_scene(workdir: Path) -> Path:
    """The ~2k x 2k synth scene (made once)."""
    from cropseg.synth import run_synth

    folder = workdir / "base"
    if not (folder / "manifest.json").exists():
        run_synth(None, None, folder, seed=3, size_m=(6144.0, 6144.0))
    return folder


def train_model(workdir: Path, base: Path, kind: str) -> Path:
    """Train a model of ``kind`` on the base scene (once)."""
    from cropseg.train import train_from_files

    out = workdir / f"model_{kind}"
    if not (out / "model.json").exists():
        train_from_files(base, base / "truth.geojson", out, aoi=base / "aoi.geojson", kind=kind)
    return out


def _mirror_index(start: int, stop: int, n: int) -> np.ndarray:
    """Indices start..stop-1 into an axis of length n, reflected at every copy's edge (0..n-1, n-1..0, ...)."""
    i = np.arange(start, stop) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def mirror_scene(base: Path, out: Path, rows: int, cols: int) -> Path:
    """A ``rows`` x ``cols`` scene folder tiled from mirrored copies of ``base`` (made once)."""
    import rasterio
    from rasterio.windows import Window

    if (out / "manifest.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((base / "manifest.json").read_text())
    for name, key in (("scene.tif", "image"), ("udm2.tif", "udm2")):
        with rasterio.open(base / manifest[key]) as src:
            data = src.read()
            profile = src.profile
            descriptions = src.descriptions
        profile.update(
            driver="GTiff", width=cols, height=rows, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
            predictor=2, BIGTIFF="IF_SAFER",
        )
        profile.pop("interleave", None)
        n_rows, n_cols = data.shape[1:]
        with rasterio.open(out / f".{name}", "w", **profile) as dst:
            for i, d in enumerate(descriptions, start=1):
                if d:
                    dst.set_band_description(i, d)
            for r0 in range(0, rows, 512):
                r1 = min(rows, r0 + 512)
                band = data[:, _mirror_index(r0, r1, n_rows)]
                for c0 in range(0, cols, 512):
                    c1 = min(cols, c0 + 512)
                    dst.write(band[:, :, _mirror_index(c0, c1, n_cols)], window=Window(c0, r0, c1 - c0, r1 - r0))
        os.replace(out / f".{name}", out / name)
    (out / "scene_metadata.xml").write_text((base / manifest["metadata"]).read_text())
    (out / "manifest.json").write_text(json.dumps({
        "provider": "cropseg-benchmark", "image": "scene.tif", "metadata": "scene_metadata.xml", "udm2": "udm2.tif",
        "product": "analytic", "mirrored_from": str(base), "shape": [rows, cols],
    }, indent=1))
    return out


IO_CODE = textwrap.dedent("""
    import sys, time, rasterio, rasterio.shutil
    import numpy as np
    from rasterio.windows import Window
    from cropseg.raster_io import CLASS_COG_OPTIONS
    scene, out = sys.argv[1:3]
    t0 = time.perf_counter()
    with rasterio.open(scene + "/scene.tif") as img, rasterio.open(scene + "/udm2.tif") as udm:
        prof = dict(driver="GTiff", width=img.width, height=img.height, count=1, dtype="uint8", crs=img.crs,
                    transform=img.transform, nodata=255, tiled=True, blockxsize=512, blockysize=512,
                    compress="deflate", predictor=2, BIGTIFF="IF_SAFER")
        with rasterio.open(out + ".work.tif", "w", **prof) as dst:
            for _, w in img.block_windows(1):
                dn = img.read(window=w)
                u = udm.read(1, window=w)
                dst.write((dn[3] > dn[2]).astype("uint8")[None] * (u > 0), window=w)
    rasterio.shutil.copy(out + ".work.tif", out, driver="COG", **CLASS_COG_OPTIONS)
    print(time.perf_counter() - t0)
""")

PREDICT_CODE = textwrap.dedent("""
    import sys, time
    from cropseg.predict import predict_from_files
    from cropseg.streaming import Execution
    model, scene, out, mode, polygons, accelerate, refine = sys.argv[1:8]
    t0 = time.perf_counter()
    if __name__ == "__main__":
        from cropseg.config import PredictConfig
        from cropseg.models import load_model
        from cropseg.predict import predict_window, with_refinement
        from cropseg.scene import open_scene
        from cropseg.streaming import PredictJob, predict_jobs
        tags = {"CROPSEG_CODING": "1=crop 0=non-crop 255=nodata"}
        trained = with_refinement(load_model(model), PredictConfig(refine=refine))
        predict_jobs(trained, [PredictJob(open_scene(scene), out)], predict_window, resume=False,
                     execution=Execution(local_mode=mode), accelerate=accelerate, tags=tags)
        t1 = time.perf_counter()
        if polygons == "1":
            from cropseg.polygonize import polygonize_file
            polys = polygonize_file(out, out + ".geojson")
        print(t1 - t0, time.perf_counter() - t1)
""")


def _measure(args: list[str]) -> dict[str, Any]:
    """Run a Python snippet; return its printed numbers, wall seconds and the peak RSS of its process tree."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run failed ({proc.returncode}): {args[1:]}")
    return {"numbers": [float(x) for x in out.split()], "wall": wall, "peak_mib": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cropseg-throughput"))
    ap.add_argument("--models", default="knn,rf,lgbm:off,lgbm:on,lgbm:on:raw,unet",
                    help="MODEL[:accelerate[:raw]] for the Mpx/s vs I/O comparison (2k scene); raw: no refinement")
    ap.add_argument("--sizes", default="2048,8192,16384", help="square scene sides for memory and linearity")
    ap.add_argument("--size-model", default="lgbm:on", help="model for the size sweep")
    ap.add_argument("--psscene", default="9000x4800", help="COLSxROWS of the end-to-end scene ('' to skip)")
    ap.add_argument("--psscene-models", default="lgbm:on", help="models run end to end on the PSScene")
    ap.add_argument("--modes", default="threads", help="local worker modes to compare (threads,processes)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row on scenes under --repeat-below Mpx (median)")
    ap.add_argument("--repeat-below", type=float, default=100.0, help="scenes of at least this many Mpx run once")
    args = ap.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()}", flush=True)

    base = base_scene(work)
    specs = args.models.split(",") + [args.size_model] + args.psscene_models.split(",")
    models = {k: train_model(work, base, k) for k in dict.fromkeys(s.partition(":")[0] for s in specs) if k}
    if "lgbm" in models:  # compile the trees once (cached), so runs with accelerate on/auto load them
        from cropseg import accel
        from cropseg.models import load_model

        start = time.perf_counter()
        accel.accelerate(load_model(models["lgbm"]), "on")
        print(f"lleaves compile (or cache load): {time.perf_counter() - start:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []

    def record(**row: Any) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    def runs(px: int) -> int:
        return max(1, args.repeat) if px / 1e6 < args.repeat_below else 1

    def summary(px: int, measured: list[dict[str, Any]]) -> dict[str, Any]:
        """Median seconds (and the median run's other numbers), the range of Mpx/s and the largest peak."""
        ordered = sorted(measured, key=lambda r: r["numbers"][0])
        mid = ordered[(len(ordered) - 1) // 2]
        rates = [px / 1e6 / r["numbers"][0] for r in measured]
        return dict(mpx=px / 1e6, seconds=mid["numbers"][0], mpx_s=px / 1e6 / mid["numbers"][0],
                    mpx_s_min=min(rates), mpx_s_max=max(rates), runs=len(measured),
                    peak_mib=max(r["peak_mib"] for r in measured), numbers=mid["numbers"])

    def run_io(scene: Path, px: int) -> float:
        s = summary(px, [_measure([IO_CODE, str(scene), str(work / "io.tif")]) for _ in range(runs(px))])
        s.pop("numbers")
        record(what="io", scene=scene.name, **s)
        return float(s["mpx_s"])

    def run_predict(scene: Path, px: int, spec: str, mode: str, polygons: bool = False) -> dict[str, Any]:
        kind, acc, refine = (spec.split(":") + ["", ""])[:3]
        code = [PREDICT_CODE, str(models[kind]), str(scene), str(work / "pred.tif"), mode,
                "1" if polygons else "0", acc or "auto", "off" if refine == "raw" else "auto"]
        s = summary(px, [_measure(code) for _ in range(runs(px))])
        row = dict(what="predict+polygons" if polygons else "predict", model=spec, mode=mode, scene=scene.name,
                   polygon_seconds=s.pop("numbers")[1], **s)
        record(**row)
        return row

    # 1. Mpx/s of each model against the I/O limit, on the same 2k-wide mirrored scene
    side = int(args.sizes.split(",")[0])
    scene = mirror_scene(base, work / f"scene_{side}", side, side)
    px = side * side
    io_rate = run_io(scene, px)
    for spec in args.models.split(","):
        for mode in args.modes.split(","):
            r = run_predict(scene, px, spec, mode)
            print(f"  {spec}/{mode}: {r['mpx_s']:.3f} Mpx/s, I/O limit {io_rate:.2f} Mpx/s, "
                  f"ratio {io_rate / r['mpx_s']:.1f}x", flush=True)

    # 2. memory and time by scene size
    for s in (int(x) for x in args.sizes.split(",")):
        scene = mirror_scene(base, work / f"scene_{s}", s, s)
        run_io(scene, s * s)
        run_predict(scene, s * s, args.size_model, args.modes.split(",")[0])

    # 3. a PSScene-sized scene end to end, with polygons
    if args.psscene:
        cols, nrows = (int(v) for v in args.psscene.split("x"))
        scene = mirror_scene(base, work / f"psscene_{cols}x{nrows}", nrows, cols)
        run_io(scene, cols * nrows)
        for spec in args.psscene_models.split(","):
            run_predict(scene, cols * nrows, spec, args.modes.split(",")[0], polygons=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(markdown(rows))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table; ratios against the I/O run on the same scene in this run."""
    io = {r["scene"]: r["mpx_s"] for r in rows if r["what"] == "io"}
    head = ("| run | model | workers | scene | Mpx | runs | seconds | Mpx/s | Mpx/s range | x slower than I/O "
            "| polygons s | peak RSS MiB |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        ratio = "" if r["what"] == "io" else f"{io[r['scene']] / r['mpx_s']:.1f}"
        poly = f"{r['polygon_seconds']:.1f}" if r.get("what") == "predict+polygons" else ""
        spread = f"{r['mpx_s_min']:.2f}-{r['mpx_s_max']:.2f}" if r.get("runs", 1) > 1 else ""
        lines.append(f"| {r['what']} | {r.get('model', '')} | {r.get('mode', '')} | {r['scene']} | {r['mpx']:.1f} "
                     f"| {r.get('runs', 1)} | {r['seconds']:.1f} | {r['mpx_s']:.2f} | {spread} | {ratio} | {poly} "
                     f"| {r['peak_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
