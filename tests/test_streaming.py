import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import rasterio

from cropseg.config import Config, PredictConfig, TrainConfig
from cropseg.errors import InputError, OutputError
from cropseg.features import FeatureSpec
from cropseg.grid import Window
from cropseg.label import NODATA
from cropseg.models import load_model
from cropseg.predict import predict_scene, predict_window, with_refinement
from cropseg.scene import open_scene
from cropseg.streaming import Execution, PredictJob, partial_folder, predict_jobs
from cropseg.testing import make_grid, write_test_scene
from cropseg.tiling import cut
from cropseg.train import train_from_files


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    files = write_test_scene(tmp / "scene", grid=make_grid(96, 80))
    cfg = Config().replace(train=TrainConfig(cv_block=8, k_values=(3, 5)))
    train_from_files(files["image"], files["truth"], tmp / "model", config=cfg)
    return tmp, files


def _bytes(path):
    return path.read_bytes()


def test_workers_do_not_change_a_byte(setup, tmp_path):
    tmp, files = setup
    model, scene = load_model(tmp / "model"), open_scene(files["image"])
    predict_scene(model, scene, tmp_path / "one.tif", tile_size=512, execution=Execution(workers=1))
    predict_scene(model, scene, tmp_path / "two.tif", tile_size=16, execution=Execution(workers=2))
    predict_scene(model, scene, tmp_path / "inflight.tif", tile_size=16, execution=Execution(workers=2, inflight=1))
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "two.tif") as b:
        assert np.array_equal(a.read(), b.read())
        assert a.profile == b.profile and a.tags() == b.tags()
    assert _bytes(tmp_path / "two.tif") == _bytes(tmp_path / "inflight.tif")
    assert not partial_folder(tmp_path / "two.tif").exists()


def test_processes_match_threads(setup, tmp_path):
    tmp, files = setup
    model, scene = load_model(tmp / "model"), open_scene(files["image"])
    predict_scene(model, scene, tmp_path / "t.tif", tile_size=32, execution=Execution(workers=2))
    predict_scene(model, scene, tmp_path / "p.tif", tile_size=32,
                  execution=Execution(workers=1, local_mode="processes"))
    assert _bytes(tmp_path / "t.tif") == _bytes(tmp_path / "p.tif")


def test_several_scenes_in_one_stream_and_stats(setup, tmp_path):
    tmp, files = setup
    model = load_model(tmp / "model")
    scene = open_scene(files["image"])
    other = write_test_scene(tmp_path / "other", grid=make_grid(40, 30), seed=3)
    jobs = [PredictJob(scene, tmp_path / "a.tif"), PredictJob(open_scene(other["image"]), tmp_path / "b.tif")]
    seen = []
    results = predict_jobs(model, jobs, predict_window, tile_size=16, progress=lambda d, i, n: seen.append((i, n)))
    assert [r.out for r in results] == [tmp_path / "a.tif", tmp_path / "b.tif"]
    assert seen[-1][0] == seen[-1][1] == results[0].tiles + results[1].tiles
    with rasterio.open(tmp_path / "a.tif") as ds:
        pred = ds.read(1)
    r = results[0]
    assert r.data_pixels == pred.size and r.valid_pixels == int((pred != NODATA).sum())
    assert r.crop_pixels == int((pred == 1).sum()) and r.clear_fraction == 1.0
    with pytest.raises(InputError, match="same output"):
        predict_jobs(model, [jobs[0], jobs[0]], predict_window)


def test_a_locked_journal_is_refused(setup, tmp_path):
    import fcntl

    tmp, files = setup
    folder = partial_folder(tmp_path / "x.tif")
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputError, match="another cropseg run"):
            predict_scene(load_model(tmp / "model"), open_scene(files["image"]), tmp_path / "x.tif")
    finally:
        os.close(fd)
    assert not (tmp_path / "x.tif").exists()


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from cropseg.models import load_model
    from cropseg.predict import predict_scene
    from cropseg.scene import open_scene
    from cropseg.streaming import Execution

    model, image, out = sys.argv[1:4]
    # a slow consumer: each written tile takes a while, so the run can be killed part-way
    predict_scene(load_model(model), open_scene(image), out, tile_size=8,
                  progress=lambda *a: time.sleep(0.05), execution=Execution(workers=1, inflight=2))
""")


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(setup, tmp_path):
    tmp, files = setup
    model, scene = load_model(tmp / "model"), open_scene(files["image"])
    out = tmp_path / "resumed.tif"
    tiles_dir = partial_folder(out) / "tiles"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp / "model"), str(files["image"]), str(out)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if tiles_dir.is_dir() and len(list(tiles_dir.glob("*.npz"))) >= 20:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists()
    recorded = len(list(tiles_dir.glob("*.npz")))
    assert 20 <= recorded < 120
    plan = json.loads((partial_folder(out) / "plan.json").read_text())
    assert plan["tile"] == [8, 8]

    computed = []
    predict_scene(model, scene, out, tile_size=8, progress=lambda d, i, n: computed.append((i, n)))
    assert computed[0] == (recorded, 120)  # progress starts where the killed run stopped
    assert len(computed) == 1 + 120 - recorded  # and only the other tiles were computed
    assert not partial_folder(out).exists()

    predict_scene(model, scene, tmp_path / "straight.tif", tile_size=8)
    assert _bytes(out) == _bytes(tmp_path / "straight.tif")


class _Stop(Exception):
    pass


def _stop_after(n):
    def progress(description, done, total):
        if done >= n:
            raise _Stop
    return progress


def test_an_interrupted_run_resumes_unless_told_not_to(setup, tmp_path):
    tmp, files = setup
    model, scene = load_model(tmp / "model"), open_scene(files["image"])
    predict_scene(model, scene, tmp_path / "ref.tif", tile_size=8)
    out = tmp_path / "p.tif"
    for resume in (True, False):
        with pytest.raises(_Stop):
            predict_scene(model, scene, out, tile_size=8, progress=_stop_after(10))
        assert not out.exists() and len(list((partial_folder(out) / "tiles").glob("*.npz"))) >= 10
        seen: list[int] = []
        predict_scene(model, scene, out, tile_size=8, resume=resume, progress=lambda d, i, n, s=seen: s.append(i))
        assert (seen[0] >= 10) if resume else (seen[0] == 0)
        assert out.read_bytes() == (tmp_path / "ref.tif").read_bytes()
        out.unlink()


def test_a_journal_of_other_inputs_is_discarded(setup, tmp_path):
    tmp, files = setup
    model, scene = load_model(tmp / "model"), open_scene(files["image"])
    out = tmp_path / "p.tif"
    folder = partial_folder(out)
    (folder / "tiles").mkdir(parents=True)
    (folder / "plan.json").write_text('{"format": "something else"}')
    np.savez_compressed(folder / "tiles" / "000000.npz", pred=np.zeros((8, 8), np.uint8), stats=np.zeros(3))
    [res] = predict_jobs(model, [PredictJob(scene, out)], predict_window, tile_size=8)
    assert res.resumed == 0
    with rasterio.open(out) as ds:
        assert (ds.read(1)[:8, :8] != 0).any()


# --- a CNN-like image model: overlapping windows keep only the centre --------------------------


@dataclass
class _ToyNet:
    """Pools 4x4 blocks, smooths 3x3 at the coarse scale, upsamples: receptive field 4 + 4 = 8 px."""

    halo: int = 8
    stride: int = 4


@dataclass
class _ToyTrained:
    model: _ToyNet = field(default_factory=_ToyNet)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    threshold: float = 0.5
    card: dict[str, Any] = field(default_factory=lambda: {"model": "toy"})


def toy_window(trained, reflectance, valid, halo):
    from scipy.ndimage import uniform_filter

    s = trained.model.stride
    ndvi = (reflectance[3] - reflectance[2]) / np.maximum(reflectance[3] + reflectance[2], 1e-6)
    rows, cols = ndvi.shape
    padded = np.zeros((-(-rows // s) * s, -(-cols // s) * s), np.float64)
    padded[:rows, :cols] = ndvi
    coarse = padded.reshape(padded.shape[0] // s, s, padded.shape[1] // s, s).mean(axis=(1, 3))
    smooth = np.rint(uniform_filter(coarse, 3, mode="constant") * 9 * 1024)
    fine = np.repeat(np.repeat(smooth, s, 0), s, 1)[:rows, :cols]
    if halo:
        fine = fine[halo:-halo, halo:-halo]
    out = np.where(fine > 0.2 * 9 * 1024, 1, 0).astype(np.uint8)
    out[~valid] = NODATA
    return out


@pytest.mark.parametrize("kind", ["pixel", "refined", "refined2", "image"])
def test_tiled_prediction_equals_the_whole_image_at_once(setup, tmp_path, kind):
    tmp, files = setup
    scene = open_scene(files["image"])
    trained = _ToyTrained() if kind == "image" else load_model(tmp / "model")
    if kind.startswith("refined"):  # classifies every step-th pixel: tiles start on multiples of the step
        step = 2 if kind == "refined2" else PredictConfig().refine_step  # 13 px tiles are rounded to 14 / 16
        trained = with_refinement(trained, PredictConfig(refine="on", refine_step=step))
        assert trained.stride == step
    window_fn = toy_window if kind == "image" else predict_window
    halo = 8 if kind == "image" else trained.halo  # the default model has context features: a 15 px halo
    refl = scene.read_reflectance()
    valid = scene.read_valid()
    padded = cut(refl, Window(-halo, -halo, 96 + 2 * halo, 80 + 2 * halo))
    whole = window_fn(trained, padded, valid, halo)
    for tile_size in (8, 13, 40):
        predict_jobs(trained, [PredictJob(scene, tmp_path / f"{tile_size}.tif")], window_fn, tile_size=tile_size)
        with rasterio.open(tmp_path / f"{tile_size}.tif") as ds:
            assert np.array_equal(ds.read(1), whole), tile_size
    if kind == "image":
        assert 0 < (whole == 1).mean() < 1  # the toy net sees the fields


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*Port .* is already in use:UserWarning")
def test_dask_cluster_output_is_byte_identical(setup, tmp_path):
    distributed = pytest.importorskip("distributed")
    tmp, files = setup
    model, scene = load_model(tmp / "model"), open_scene(files["image"])
    predict_scene(model, scene, tmp_path / "local.tif", tile_size=16)
    # worker threads in this process: quick to start; the model still goes through client.scatter
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  protocol="tcp", host="127.0.0.1", silence_logs=40) as cluster:
        ex = Execution(scheduler="dask", dask_address=cluster.scheduler_address)
        predict_scene(model, scene, tmp_path / "dask.tif", tile_size=16, execution=ex)
    assert _bytes(tmp_path / "local.tif") == _bytes(tmp_path / "dask.tif")


def test_execution_is_checked():
    with pytest.raises(InputError, match="scheduler"):
        Execution(scheduler="spark")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="dask"):
        Execution(dask_address="tcp://127.0.0.1:8786")
    with pytest.raises(InputError, match="workers"):
        Execution(workers=0)


def test_compiled_lightgbm_gives_the_same_probabilities_and_bytes(setup, tmp_path, monkeypatch):
    import pickle

    from cropseg import accel

    if not accel.available():
        pytest.skip("lleaves is not installed (pip install 'cropseg[fast]')")
    lgb = pytest.importorskip("lightgbm")
    from cropseg.models import TrainedModel
    from cropseg.models.lgbm import LGBMModel

    monkeypatch.setenv("CROPSEG_CACHE", str(tmp_path / "cache"))
    tmp, files = setup
    scene = open_scene(files["image"])
    refl = scene.read_reflectance().reshape(4, -1).T
    y = (refl[:, 3] > 2 * refl[:, 2]).astype(int)
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "verbose": -1, "min_data_in_leaf": 5,
                         "num_threads": 1}, lgb.Dataset(refl, y), 20)
    trained = TrainedModel(LGBMModel(booster=booster), FeatureSpec(), threshold=0.5, card={"model": "lgbm"})
    assert accel.accelerate(trained, "auto", pixels=100) is trained  # small run, nothing cached: no compile
    fast = accel.accelerate(trained, "on")
    assert isinstance(fast.model, accel.CompiledLGBM)
    assert np.array_equal(fast.predict_proba(refl), trained.predict_proba(refl))
    again = pickle.loads(pickle.dumps(fast.model))  # travels to workers with its compiled code
    assert np.array_equal(again.predict_proba(refl[:50]), trained.predict_proba(refl[:50]))
    assert accel.accelerate(trained, "auto", pixels=100).model.cached  # now cached: auto uses it
    predict_jobs(trained, [PredictJob(scene, tmp_path / "slow.tif")], predict_window, accelerate="off")
    predict_jobs(trained, [PredictJob(scene, tmp_path / "fast.tif")], predict_window, accelerate="on")
    assert (tmp_path / "slow.tif").read_bytes() == (tmp_path / "fast.tif").read_bytes()


def test_a_custom_objective_model_compiles_too(setup, tmp_path, monkeypatch):
    from cropseg import accel

    if not accel.available():
        pytest.skip("lleaves is not installed (pip install 'cropseg[fast]')")
    from cropseg.models import TrainedModel
    from cropseg.models.lgbm import LGBMModel

    monkeypatch.setenv("CROPSEG_CACHE", str(tmp_path / "cache"))
    _, files = setup
    refl = open_scene(files["image"]).read_reflectance().reshape(4, -1).T
    y = (refl[:, 3] > 2 * refl[:, 2]).astype(int)
    groups = np.arange(len(y)) % 6
    model = LGBMModel(grid=({"num_leaves": 7, "min_data_in_leaf": 5},), max_rounds=10)
    model.fit(refl, y, groups, reweight="rgd", rgd_clip=1.0)  # RGD: a custom objective, no objective line
    trained = TrainedModel(model, FeatureSpec(), threshold=0.5, card={"model": "lgbm"})
    fast = accel.accelerate(trained, "on")
    assert isinstance(fast.model, accel.CompiledLGBM)
    np.testing.assert_allclose(fast.predict_proba(refl), trained.predict_proba(refl), rtol=0, atol=1e-6)


def test_the_gdal_block_cache_is_megabytes_not_bytes():
    # rasterio hands an integer GDAL_CACHEMAX to GDAL as bytes: 256 meant a 256-byte cache, and every tile
    # decompressed again each of the up to nine blocks its halo touches
    from rasterio._env import get_gdal_config

    from cropseg.streaming import GDAL_CACHE_MB, gdal_cache

    with gdal_cache():
        assert int(get_gdal_config("GDAL_CACHEMAX")) == GDAL_CACHE_MB * 2**20


def test_freed_tile_memory_stays_in_the_heap(monkeypatch):
    import platform

    from cropseg import streaming

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt settings are for glibc only")
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(streaming, "_MALLOC_TUNED", False)
    assert streaming.keep_heap_memory()  # glibc took every setting
    assert not streaming.keep_heap_memory()  # once per process
    streaming.trim_heap()  # hands free memory back (and does not fail)
    monkeypatch.setattr(streaming, "_MALLOC_TUNED", False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the user tunes malloc: leave it alone
    assert not streaming.keep_heap_memory()


_THREAD_HEAP_CODE = textwrap.dedent("""
    import resource, sys, threading
    import numpy as np
    from cropseg import streaming
    if sys.argv[1] == "default":
        streaming.MALLOC_SETTINGS.clear()
    streaming.keep_heap_memory()
    faults = []
    def tiles():
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            arrays = [np.ones((600, 600), np.float32) for _ in range(80)]  # 115 MB: two 64 MiB sub-heaps
            del arrays
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    worker = threading.Thread(target=tiles)
    worker.start()
    worker.join()
    print(*faults)
""")


def test_a_worker_threads_second_tile_reuses_its_heap():
    """A thread's second round of tile-sized temporaries takes no fresh pages (glibc keeps its emptied sub-heaps)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt settings are for glibc only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def faults(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _THREAD_HEAP_CODE, mode], env=env, check=True,
                             capture_output=True, text=True, timeout=120).stdout
        return [int(v) for v in out.split()]

    first, second = faults("tuned")
    assert first > 20_000  # 115 MB of 4 KiB pages, touched for the first time
    assert second < first // 100
    # glibc's defaults unmap the emptied sub-heap and fault it in again: the check above can fail
    assert faults("default")[1] > first // 10
