"""Persisted prediction jobs: a model registry, a SQLite job store and a bounded worker pool.

This is the engine behind ``cropseg serve`` (:mod:`cropseg.serve`); it imports no web framework.

- :class:`ModelRegistry` lists the model directories under one folder and loads each model once,
  reloading it only when its weights change.
- :class:`JobStore` keeps one row per job in SQLite (WAL mode): state, progress, error, results.
- :class:`JobService` owns the work directory: it admits jobs into a bounded queue
  (:class:`QueueFullError` when full), runs them on a fixed number of worker threads, records every
  state transition, recovers after a restart (queued jobs run, interrupted ones run again, finished
  ones keep their results) and deletes finished jobs after the retention time.

Work directory layout::

    WORK_DIR/jobs.sqlite3             the job store
    WORK_DIR/lock                     held by the one server using this directory
    WORK_DIR/jobs/<id>/input/<field>/ uploaded inputs (removed when the job finishes)
    WORK_DIR/jobs/<id>/prediction.tif, polygons.geojson, polygons.gpkg, metrics.json

Job states: ``queued`` -> ``running`` -> ``succeeded`` | ``failed``; ``cancelled`` while a running
job that was deleted stops. A job interrupted by a crash runs again, at most ``max_attempts`` times.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

from cropseg.config import Config
from cropseg.errors import CropSegError, InputFileNotFoundError, OutputError
from cropseg.models import CARD_NAME, TrainedModel, load_model, read_card
from cropseg.progress import ProgressCallback

log = logging.getLogger("cropseg.serve")

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
#: States of a job that will not change any more.
FINISHED_STATES = ("succeeded", "failed")
#: Result files a job may produce, with their media types.
RESULT_MEDIA_TYPES: dict[str, str] = {
    "prediction.tif": "image/tiff",
    "polygons.geojson": "application/geo+json",
    "polygons.gpkg": "application/geopackage+sqlite3",
    "metrics.json": "application/json",
}
#: Names a model directory may have in the registry.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: Job ids: 32 lowercase hex digits.
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)
_DB_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    results TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
"""


class QueueFullError(CropSegError):
    """The job queue is full; try again after :attr:`retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobNotReadyError(InputFileNotFoundError):
    """A job's result was asked for before the job succeeded."""


class _Interrupted(Exception):  # noqa: N818  (control flow, never shown to users)
    """Raised from the progress callback to stop a running job (deleted, or the server stops)."""


# -- model registry -----------------------------------------------------------------------------------


class ModelRegistry:
    """The model directories under ``models_dir``, each loaded once and reused.

    A model is reloaded only when its card names other weights (it was retrained in place).
    """

    def __init__(self, models_dir: str | Path) -> None:
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[str, TrainedModel]] = {}

    def folder(self, name: str) -> Path:
        """The directory of model ``name``.

        Raises:
            InputFileNotFoundError: no such model.
        """
        folder = self.models_dir / name
        if not _MODEL_NAME.match(name) or not folder.is_dir():
            raise InputFileNotFoundError(f"model {name!r} is not in the registry; GET /models lists the models")
        return folder

    def names(self) -> list[str]:
        """Names of the sub-directories that hold a model card, sorted."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.models_dir.iterdir() if _MODEL_NAME.match(p.name) and (p / CARD_NAME).is_file()
        )

    def card(self, name: str) -> dict[str, Any]:
        """The checked model card of ``name`` (:class:`ModelError` when it is not a valid card)."""
        return read_card(self.folder(name))

    def cards(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, card) of every valid model; invalid ones are logged and left out."""
        out = []
        for name in self.names():
            try:
                out.append((name, self.card(name)))
            except CropSegError as exc:
                log.warning("model %s is left out of the registry: %s", name, exc)
        return out

    def load(self, name: str) -> TrainedModel:
        """The loaded model ``name``, from the cache unless its weights changed."""
        folder = self.folder(name)
        digest = str(read_card(folder).get("weights", {}).get("sha256", ""))
        with self._lock:
            cached = self._loaded.get(name)
            if cached is not None and cached[0] == digest:
                return cached[1]
            trained = load_model(folder)
            self._loaded[name] = (digest, trained)
            log.info("loaded model %s", name)
            return trained


# -- job records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """What a job runs: resolved input paths and the options of the request."""

    model: str
    image: str
    source: str
    metadata: str | None = None
    udm2: str | None = None
    labels: str | None = None
    product: str = "auto"
    polygonize: bool = False
    median_size: int = 5
    simplify: float = 3.0
    min_area: float = 2500.0
    label_field: str | None = "CLASS1"
    crop_classes: tuple[str, ...] = ("G", "R", "F", "P", "T", "D", "C", "V")
    uploaded: bool = False

    def to_json(self) -> str:
        """JSON for the job store."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobRequest:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["crop_classes"] = tuple(data.get("crop_classes", ()))
        return cls(**data)


@dataclass(frozen=True)
class Job:
    """One row of the job store. Times are seconds since the epoch."""

    id: str
    state: JobState
    request: JobRequest
    created: float
    started: float | None = None
    finished: float | None = None
    progress: float = 0.0
    stage: str = ""
    error: str | None = None
    attempts: int = 0
    results: tuple[str, ...] = ()


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the form of a job id."""
    return bool(_JOB_ID.match(value))


class JobStore:
    """Jobs in a SQLite database (WAL mode), one row per job; safe to use from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _DB_VERSION):
                raise OutputError(
                    f"job database {self.path} has version {version}; this cropseg reads {_DB_VERSION}: "
                    "choose another --work-dir"
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_DB_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise OutputError(
                f"cannot use {self.path} as the job database ({exc}); move it away or choose another --work-dir"
            ) from exc

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                raise OutputError(f"job database {self.path} failed: {exc}") from exc

    @staticmethod
    def _job(row: tuple[Any, ...]) -> Job:
        return Job(
            id=row[0],
            state=row[1],
            request=JobRequest.from_json(row[2]),
            created=row[3],
            started=row[4],
            finished=row[5],
            progress=row[6],
            stage=row[7],
            error=row[8],
            attempts=row[9],
            results=tuple(json.loads(row[10])),
        )

    _COLUMNS = "id, state, request, created, started, finished, progress, stage, error, attempts, results"

    def insert(self, job: Job) -> None:
        """Add a new job."""
        with self._cursor() as db:
            db.execute(
                f"INSERT INTO jobs ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id, job.state, job.request.to_json(), job.created, job.started, job.finished,
                    job.progress, job.stage, job.error, job.attempts, json.dumps(list(job.results)),
                ),
            )

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        with self._cursor() as db:
            row = db.execute(f"SELECT {self._COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def recent(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first, optionally in one state."""
        with self._cursor() as db:
            if state is None:
                rows = db.execute(
                    f"SELECT {self._COLUMNS} FROM jobs ORDER BY created DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {self._COLUMNS} FROM jobs WHERE state = ? ORDER BY created DESC LIMIT ?", (state, limit)
                ).fetchall()
        return [self._job(r) for r in rows]

    def ids(self, state: str) -> list[str]:
        """Ids of the jobs in ``state``, oldest first."""
        with self._cursor() as db:
            return [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = ? ORDER BY created", (state,))]

    def all_ids(self) -> set[str]:
        """Every job id."""
        with self._cursor() as db:
            return {r[0] for r in db.execute("SELECT id FROM jobs")}

    def update(self, job_id: str, expect: str | None = None, **values: Any) -> bool:
        """Set columns of one job (only while it is in state ``expect``, when given); whether a row changed."""
        if "results" in values:
            values["results"] = json.dumps(list(values["results"]))
        sets = ", ".join(f"{k} = ?" for k in values)
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        params: list[Any] = [*values.values(), job_id]
        if expect is not None:
            sql += " AND state = ?"
            params.append(expect)
        with self._cursor() as db:
            return db.execute(sql, params).rowcount > 0

    def delete(self, job_id: str) -> None:
        """Remove one job."""
        with self._cursor() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of the succeeded or failed jobs that finished before ``cutoff``."""
        with self._cursor() as db:
            return [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed') AND finished < ?", (cutoff,)
                )
            ]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        with self._cursor() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in JOB_STATES} | {s: int(n) for s, n in rows}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


# -- the service -------------------------------------------------------------------------------------


def _lock_file(handle: IO[str]) -> bool:
    """Take an exclusive, non-blocking lock on an open file; whether it was taken."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class JobService:
    """Admit, run, persist and expire prediction jobs in one work directory.

    Args:
        work_dir: where the job store, uploads and results live (created when missing).
        registry: the models jobs may use.
        workers: number of jobs that run at the same time (worker threads).
        queue_size: most jobs waiting to run; more submissions raise :class:`QueueFullError`.
        retention_seconds: finished jobs and their results are deleted this long after they finish.
        cleanup_interval: seconds between two retention sweeps.
        config: pipeline settings (tile size, haze masking).
        max_attempts: a job interrupted by crashes this many times fails instead of running again.
        redact: turns error messages into what clients may see (e.g. drops server paths).
    """

    def __init__(
        self,
        work_dir: str | Path,
        registry: ModelRegistry,
        *,
        workers: int = 2,
        queue_size: int = 64,
        retention_seconds: float = 7 * 24 * 3600,
        cleanup_interval: float = 60.0,
        config: Config | None = None,
        max_attempts: int = 3,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.jobs_dir = self.work_dir / "jobs"
        try:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the work directory {self.work_dir}: {exc}") from exc
        self.registry = registry
        self.workers = workers
        self.queue_size = queue_size
        self.retention_seconds = retention_seconds
        self.cleanup_interval = cleanup_interval
        self.config = config or Config()
        self.max_attempts = max_attempts
        self.redact = redact or (lambda message: message)
        self.store = JobStore(self.work_dir / "jobs.sqlite3")
        self._cond = threading.Condition()
        self._pending: deque[str] = deque()
        self._running: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock_handle: IO[str] | None = None
        self._durations: deque[float] = deque(maxlen=32)

    # -- life cycle

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` has not stopped the service yet."""
        return self._lock_handle is not None

    def start(self) -> None:
        """Lock the work directory, recover the jobs of a previous run and start the workers.

        Raises:
            OutputError: another server uses this work directory.
        """
        if self.running:
            return
        handle = open(self.work_dir / "lock", "a+")  # noqa: SIM115  (held open while the service runs)
        if not _lock_file(handle):
            handle.close()
            raise OutputError(
                f"work directory {self.work_dir} is in use by another cropseg server; stop it or choose another "
                "--work-dir"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle
        self._stop.clear()
        self.recover()
        for i in range(self.workers):
            self._spawn(self._work, f"cropseg-worker-{i}")
        self._spawn(self._janitor, "cropseg-janitor")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the workers; running jobs stop at their next window and go back to the queue.

        Returns:
            Whether every worker stopped within ``timeout`` seconds (the job store is closed then).
        """
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stopped = not any(t.is_alive() for t in self._threads)
        self._threads = []
        if stopped:
            self.store.close()
            if self._lock_handle is not None:
                self._lock_handle.close()
                self._lock_handle = None
        else:
            log.warning("some jobs did not stop within %.0f s; they will run again at the next start", timeout)
        return stopped

    def recover(self) -> None:
        """Requeue the jobs of a previous run and remove what no job owns."""
        for job_id in self.store.ids("cancelled"):
            self._remove(job_id)
        for job_id in self.store.ids("running"):
            self.store.update(job_id, expect="running", state="queued", stage="interrupted; queued again")
            log.info("job %s was interrupted; it will run again", job_id)
        with self._cond:
            self._pending.extend(i for i in self.store.ids("queued") if i not in self._pending)
            self._cond.notify_all()
        known = self.store.all_ids()
        for path in self.jobs_dir.iterdir():
            if path.name not in known:
                _rmtree(path)
        self.purge_expired()

    # -- submission and queries

    def new_job_id(self) -> str:
        """A fresh job id with an empty job directory."""
        job_id = uuid.uuid4().hex
        self.job_dir(job_id).mkdir(parents=True)
        return job_id

    def job_dir(self, job_id: str) -> Path:
        """The folder of one job's inputs and results."""
        if not is_job_id(job_id):
            raise InputFileNotFoundError(f"job {job_id!r} does not exist")
        return self.jobs_dir / job_id

    def input_dir(self, job_id: str) -> Path:
        """Where a job's uploaded inputs go."""
        return self.job_dir(job_id) / "input"

    def queue_full(self) -> bool:
        """Whether a submission now would be refused."""
        with self._cond:
            return len(self._pending) >= self.queue_size

    def retry_after(self) -> int:
        """Seconds after which the queue probably has room again (at least 1)."""
        with self._cond:
            waiting = len(self._pending)
            mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        estimate = mean * max(1, waiting - self.queue_size + 1) / max(1, self.workers)
        return int(min(3600, max(1, math.ceil(estimate))))

    def submit(self, job_id: str, request: JobRequest) -> Job:
        """Queue a job whose inputs are in place (in :meth:`input_dir` for uploads).

        Raises:
            QueueFullError: the queue holds ``queue_size`` jobs.
        """
        job = Job(id=job_id, state="queued", request=request, created=time.time(), stage="queued")
        with self._cond:
            if len(self._pending) >= self.queue_size:
                raise QueueFullError(
                    f"the job queue is full ({self.queue_size} jobs waiting); try again later",
                    self.retry_after(),
                )
            self.store.insert(job)
            self._pending.append(job_id)
            self._cond.notify()
        return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id``.

        Raises:
            InputFileNotFoundError: no such job (it may have expired).
        """
        job = self.store.get(job_id) if is_job_id(job_id) else None
        if job is None:
            raise InputFileNotFoundError(f"job {job_id!r} does not exist (finished jobs expire)")
        return job

    def recent(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first."""
        return self.store.recent(state, limit)

    def queue_position(self, job_id: str) -> int | None:
        """0 for the next job to run, None when the job is not waiting."""
        with self._cond:
            try:
                return self._pending.index(job_id)
            except ValueError:
                return None

    def stats(self) -> dict[str, int]:
        """Jobs per state, plus the queue's capacity and the number of workers."""
        return {**self.store.counts(), "queue_size": self.queue_size, "workers": self.workers}

    def result_path(self, job_id: str, name: str) -> Path:
        """The file of a result of a succeeded job.

        Raises:
            InputFileNotFoundError: no such job, the job has not succeeded, or it has no such result.
        """
        job = self.get(job_id)
        if job.state != "succeeded":
            raise JobNotReadyError(f"job {job_id} is {job.state}, it has no results yet; poll GET /jobs/{job_id}")
        if name not in job.results:
            raise InputFileNotFoundError(f"job {job_id} has no {name} (ask for it when submitting the job)")
        path = self.job_dir(job_id) / name
        if not path.is_file():
            raise InputFileNotFoundError(f"job {job_id} is being deleted; its {name} is gone")
        return path

    def delete(self, job_id: str) -> None:
        """Delete a job and its files; a running job is cancelled and stops at its next window.

        Raises:
            InputFileNotFoundError: no such job.
        """
        self.get(job_id)
        with self._cond:
            if job_id in self._running:
                self._running[job_id].set()
                self.store.update(job_id, expect="running", state="cancelled", stage="cancelling")
                return
            with contextlib.suppress(ValueError):
                self._pending.remove(job_id)
            self._remove(job_id)

    def _remove(self, job_id: str) -> None:
        _rmtree(self.jobs_dir / job_id)  # files first: a job that is still listed may lack files, never the reverse
        self.store.delete(job_id)

    def purge_expired(self) -> int:
        """Delete the jobs that finished more than the retention time ago; how many."""
        expired = self.store.finished_before(time.time() - self.retention_seconds)
        for job_id in expired:
            self._remove(job_id)
        if expired:
            log.info("deleted %d expired job(s)", len(expired))
        return len(expired)

    # -- workers

    def _janitor(self) -> None:
        while not self._stop.wait(self.cleanup_interval):
            try:
                self.purge_expired()
            except Exception:
                log.exception("retention sweep failed")

    def _next(self) -> tuple[str, threading.Event] | None:
        with self._cond:
            while not self._pending and not self._stop.is_set():
                self._cond.wait()
            if self._stop.is_set():
                return None
            job_id = self._pending.popleft()
            cancel = threading.Event()
            self._running[job_id] = cancel
            return job_id, cancel

    def _work(self) -> None:
        while (item := self._next()) is not None:
            job_id, cancel = item
            try:
                self._run(job_id, cancel)
            except Exception:
                log.exception("job %s: unexpected failure of the worker", job_id)
            finally:
                with self._cond:
                    self._running.pop(job_id, None)

    def _run(self, job_id: str, cancel: threading.Event) -> None:
        job = self.store.get(job_id)
        if job is None or job.state != "queued":
            return
        attempts = job.attempts + 1
        if attempts > self.max_attempts:
            self._finish(job, "failed", error=f"the job was interrupted {job.attempts} times; giving up")
            return
        started = time.time()
        if not self.store.update(
            job_id, expect="queued", state="running", started=started, attempts=attempts, progress=0.0,
            stage="starting", error=None,
        ):
            return
        log.info("job %s: running (attempt %d)", job_id, attempts)
        try:
            results = self._execute(job, cancel)
        except _Interrupted:
            if cancel.is_set():
                self._remove(job_id)
                log.info("job %s: cancelled and deleted", job_id)
            else:  # the server is stopping: run it again at the next start, without counting this attempt
                self.store.update(
                    job_id, expect="running", state="queued", attempts=attempts - 1, progress=0.0,
                    stage="interrupted by shutdown; queued again",
                )
                log.info("job %s: interrupted by shutdown, queued again", job_id)
            return
        except CropSegError as exc:
            self._finish(job, "failed", error=self.redact(str(exc)))
            return
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job_id)
            self._finish(job, "failed", error=f"internal error ({type(exc).__name__}); see the server log")
            return
        self._durations.append(time.time() - started)
        self._finish(job, "succeeded", results=results)

    def _finish(self, job: Job, state: JobState, error: str | None = None, results: tuple[str, ...] = ()) -> None:
        if job.request.uploaded:
            _rmtree(self.input_dir(job.id))
        done = self.store.update(
            job.id, expect="running", state=state, finished=time.time(), error=error, results=results,
            progress=1.0 if state == "succeeded" else job.progress, stage="done" if state == "succeeded" else "failed",
        )
        if not done:  # deleted while running, or never started (too many attempts)
            if (current := self.store.get(job.id)) is not None and current.state == "cancelled":
                self._remove(job.id)
                return
            self.store.update(job.id, state=state, finished=time.time(), error=error, results=results)
        log.info("job %s: %s%s", job.id, state, f" ({error})" if error else "")

    def _execute(self, job: Job, cancel: threading.Event) -> tuple[str, ...]:
        from cropseg.evaluate import evaluate_files
        from cropseg.polygonize import polygonize_file
        from cropseg.predict import predict_scene, with_refinement
        from cropseg.raster_io import atomic_path
        from cropseg.scene import open_scene

        req = job.request
        folder = self.job_dir(job.id)
        for leftover in folder.iterdir():  # partial files of an interrupted attempt
            if leftover.name != "input":
                _rmtree(leftover)
        last_write = [0.0]

        def stage(description: str, fraction: float, force: bool = True) -> None:
            if cancel.is_set() or self._stop.is_set():
                raise _Interrupted(description)
            now = time.monotonic()
            if force or now - last_write[0] >= 0.25:
                last_write[0] = now
                self.store.update(job.id, expect="running", progress=round(fraction, 4), stage=description)

        def predicting(description: str, completed: int, total: int) -> None:
            stage(description, 0.8 * completed / max(total, 1), force=completed in (0, total))

        progress: ProgressCallback = predicting
        stage("Loading the model", 0.0)
        trained = with_refinement(self.registry.load(req.model), self.config.predict)
        scene = open_scene(
            req.image, req.metadata, req.udm2, product=req.product,  # type: ignore[arg-type]
            mask_haze=self.config.radiometry.mask_haze, discover=False,
        )
        pred = predict_scene(trained, scene, folder / "prediction.tif", self.config.predict.tile_size, progress)
        results = ["prediction.tif"]
        if req.polygonize:
            stage("Polygonizing", 0.85)
            polygonize_file(
                pred, folder / "polygons.geojson", gpkg=folder / "polygons.gpkg", median_size=req.median_size,
                simplify=req.simplify, min_area=req.min_area,
            )
            results += ["polygons.geojson", "polygons.gpkg"]
        if req.labels is not None:
            stage("Evaluating", 0.9)
            metrics = evaluate_files(pred, req.labels, label_field=req.label_field, crop_classes=req.crop_classes)
            metrics["inputs"] = {"job": job.id, "source": req.source, "model": req.model}
            with atomic_path(folder / "metrics.json", suffix=".json") as tmp:
                tmp.write_text(json.dumps(metrics, indent=2) + "\n")
            results.append("metrics.json")
        stage("Finishing", 1.0)
        return tuple(results)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = [
    "FINISHED_STATES",
    "JOB_ID_PATTERN",
    "JOB_STATES",
    "MODEL_NAME_PATTERN",
    "RESULT_MEDIA_TYPES",
    "Job",
    "JobNotReadyError",
    "JobRequest",
    "JobService",
    "JobState",
    "JobStore",
    "ModelRegistry",
    "QueueFullError",
    "is_job_id",
]
