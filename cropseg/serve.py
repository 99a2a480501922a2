"""The HTTP inference service behind ``cropseg serve``: FastAPI on uvicorn.

:func:`create_app` builds the app from a :class:`ServeSettings`; :func:`run_server` serves it.
Routes (all but ``/healthz`` need the ``X-API-Key`` header when an API key is set):

- ``GET /healthz``: liveness.
- ``GET /models``, ``GET /models/{name}``: the model directories under ``models_dir`` with their cards.
- ``POST /jobs`` (multipart form): a scene, uploaded (``image``, optional ``metadata`` XML and ``udm2``)
  or named by a path inside ``data_dir``, a ``model`` and options; answers ``202`` with the job at once.
- ``GET /jobs``, ``GET /jobs/{id}``: state, progress, error and result links; ``DELETE /jobs/{id}``.
- ``GET /jobs/{id}/prediction.tif`` (COG), ``/polygons.geojson``, ``/polygons.gpkg``, ``/metrics.json``.
- ``GET /openapi.json``; ``/docs`` (Swagger UI) and ``/redoc`` served from the ``fastapi-offline`` wheel's files.

Bad requests get a JSON body ``{"detail": "message"}``: 400 (malformed request), 401 (API key),
403 (path outside the data directory), 404 (no such model, job, file or result), 408 (request too
slow), 409 (result of an unfinished job), 413 (upload or scene too large), 415 (not a GeoTIFF),
422 (a GeoTIFF cropseg cannot use: no CRS, wrong band count, ...; or invalid options), 429 (queue
full, with ``Retry-After``). Jobs run in a :class:`cropseg.jobs.JobService`; see there for the
work directory and the job life cycle.

Only this module imports FastAPI; it is imported by ``cropseg serve`` alone, so the rest of cropseg
works without the ``serve`` extra.
"""

import contextlib
import hmac
import logging
import math
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cropseg import __version__
from cropseg.config import DWR_CROP_CLASSES, Config
from cropseg.errors import (
    ConfigError,
    CropSegError,
    InputFileNotFoundError,
    InvalidMetadataError,
    InvalidRasterError,
    InvalidVectorError,
    LabelError,
    ModelError,
    NoOverlapError,
    OutputError,
)
from cropseg.jobs import (
    JOB_ID_PATTERN,
    RESULT_MEDIA_TYPES,
    Job,
    JobNotReadyError,
    JobRequest,
    JobService,
    ModelRegistry,
    QueueFullError,
)

log = logging.getLogger("cropseg.serve")

#: Seconds an idle keep-alive connection stays open. Longer than common clients keep theirs (httpx: 5 s), so
#: that a client never sends a request on a connection the server is closing at that moment (uvicorn's own
#: default is 5 s, exactly httpx's: under load some requests then met "Server disconnected").
KEEP_ALIVE_SECONDS = 15

API_KEY_HEADER = "X-API-Key"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LABEL_SUFFIXES = (".geojson", ".json", ".gpkg", ".tif", ".tiff")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
#: CLI wording in cropseg's messages, and what a client of the API sends instead.
_CLI_WORDS = {
    "--image FILE": "'path'",
    "--metadata": "'metadata'",
    "--udm2": "'udm2'",
    "--product ": "product=",
    "--label-field": "'label_field'",
}


def default_work_dir() -> Path:
    """``$XDG_CACHE_HOME/cropseg/serve``, or ``~/.cache/cropseg/serve``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cropseg" / "serve"


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``cropseg serve`` can be told.

    Attributes:
        models_dir: a folder of model directories (each written by ``cropseg train``); the sub-folder's
            name is the model's name.
        data_dir: a folder whose files jobs may name by path (relative to it); None: uploads only.
        work_dir: where the job database, uploads and results live (default :func:`default_work_dir`).
            One server at a time uses a work directory.
        api_key: when set, every route but ``/healthz`` needs it in the ``X-API-Key`` header.
        max_upload_bytes: largest request body (all uploads of one job together).
        max_scene_pixels: largest scene (width x height) a job may predict.
        workers: jobs that run at the same time (threads).
        queue_size: jobs that may wait; a submission beyond gets 429 with Retry-After.
        retention_seconds: finished jobs and their results are deleted this long after they finish.
        request_timeout_seconds: longest time to receive a request and start the response (408/503 after).
        cleanup_interval_seconds: time between two retention sweeps.
        shutdown_timeout_seconds: how long a stopping server waits for running jobs to stop.
        config: pipeline settings (tile size, haze masking).
    """

    models_dir: Path
    data_dir: Path | None = None
    work_dir: Path = field(default_factory=default_work_dir)
    api_key: str | None = field(default=None, repr=False)
    max_upload_bytes: int = 1 << 30
    max_scene_pixels: int = 250_000_000
    workers: int = 2
    queue_size: int = 64
    retention_seconds: float = 7 * 24 * 3600.0
    request_timeout_seconds: float = 300.0
    cleanup_interval_seconds: float = 60.0
    shutdown_timeout_seconds: float = 10.0
    config: Config = field(default_factory=Config)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models_dir", Path(self.models_dir).expanduser().resolve())
        object.__setattr__(self, "work_dir", Path(self.work_dir).expanduser().resolve())
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
            if not self.data_dir.is_dir():
                raise InputFileNotFoundError(f"data directory {self.data_dir} does not exist; check --data-dir")
        if not self.models_dir.is_dir():
            raise InputFileNotFoundError(f"models directory {self.models_dir} does not exist; check --models")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            raise ConfigError("the API key must be printable ASCII (it travels in an HTTP header)")
        for name in ("max_upload_bytes", "max_scene_pixels", "workers", "queue_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("retention_seconds", "request_timeout_seconds", "cleanup_interval_seconds"):
            value = float(getattr(self, name))
            if not value > 0 or math.isnan(value):
                raise ConfigError(f"{name} must be positive, got {value}")


# -- response bodies ---------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """What every error answers."""

    detail: str = Field(description="What went wrong and how to fix it.")


class HealthOut(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"
    version: str = Field(description="cropseg version.")


class ModelOut(BaseModel):
    """A model of the registry."""

    name: str = Field(description="The model's name: its directory under the models folder.")
    card: dict[str, Any] = Field(description="The model card (model.json): kind, features, CV scores, training data.")


class JobOptionsOut(BaseModel):
    """Options a job was submitted with."""

    product: str
    polygonize: bool
    median_size: int
    simplify: float
    min_area: float
    labels: bool = Field(description="Whether labels were given (then metrics.json is computed).")
    label_field: str | None
    crop_classes: list[str]


class JobOut(BaseModel):
    """A job's state."""

    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model: str
    source: str = Field(description="The scene: the uploaded file's name, or the path in the data directory.")
    options: JobOptionsOut
    created: datetime
    started: datetime | None
    finished: datetime | None
    progress: float = Field(ge=0, le=1, description="Fraction done, 0 to 1.")
    stage: str = Field(description="What the job is doing.")
    error: str | None = Field(description="Why the job failed.")
    attempts: int = Field(description="Times the job started (more than 1 after an interrupted run).")
    queue_position: int | None = Field(description="Jobs ahead of this one in the queue (queued jobs only).")
    results: dict[str, str] = Field(description="Result name -> URL path, once the job succeeded.")


class JobListOut(BaseModel):
    """Jobs, newest first."""

    jobs: list[JobOut]


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _job_out(job: Job, position: int | None) -> JobOut:
    req = job.request
    return JobOut(
        id=job.id,
        state=job.state,
        model=req.model,
        source=req.source,
        options=JobOptionsOut(
            product=req.product, polygonize=req.polygonize, median_size=req.median_size, simplify=req.simplify,
            min_area=req.min_area, labels=req.labels is not None, label_field=req.label_field,
            crop_classes=list(req.crop_classes),
        ),
        created=datetime.fromtimestamp(job.created, UTC),
        started=_time(job.started),
        finished=_time(job.finished),
        progress=min(1.0, max(0.0, job.progress)),
        stage=job.stage,
        error=job.error,
        attempts=job.attempts,
        queue_position=position,
        results={name: f"/jobs/{job.id}/{name}" for name in job.results},
    )


# -- errors ------------------------------------------------------------------------------------------


def status_for(exc: CropSegError) -> int:
    """The HTTP status of one of cropseg's errors."""
    if isinstance(exc, QueueFullError):
        return 429
    if isinstance(exc, JobNotReadyError):
        return 409
    if isinstance(exc, InputFileNotFoundError):
        return 404
    if isinstance(
        exc,
        InvalidRasterError | InvalidVectorError | InvalidMetadataError | NoOverlapError | LabelError | ConfigError,
    ):
        return 422
    if isinstance(exc, ModelError):
        return 422
    if isinstance(exc, OutputError):
        return 500
    return 400


def _error_responses(*codes: int, file_route: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI docs of error answers (JSON ErrorOut), also on routes whose success is a file."""
    descriptions = {
        400: "Malformed request.",
        401: "Missing or wrong API key (X-API-Key header).",
        403: "Path outside the server's data directory.",
        404: "No such model, job, file or result.",
        408: "The request took longer than the request timeout to arrive.",
        409: "The job has not succeeded (yet).",
        413: "Upload or scene too large.",
        415: "An upload is not a GeoTIFF (or labels not GeoJSON / GeoPackage / GeoTIFF).",
        422: "Invalid options, or inputs cropseg cannot use (no CRS, wrong band count, ...).",
        429: "The job queue is full; retry after Retry-After seconds.",
        503: "The server took longer than the request timeout.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    error_json = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for code in codes:
        # FastAPI documents a "model" in the route's media type; a file route's errors are still JSON
        out[code] = {"description": descriptions[code]} | (
            {"content": error_json} if file_route else {"model": ErrorOut}
        )
    if 429 in out:
        out[429]["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return out


def _json(body: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A model as a JSON response, serialized once (FastAPI would validate it again against response_model)."""
    return Response(body.model_dump_json(), status_code=status, headers=headers, media_type="application/json")


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _make_redact(settings: ServeSettings) -> Callable[[str], str]:
    """A function that removes server paths and CLI wording from messages sent to clients."""
    jobs = re.escape(str(settings.work_dir / "jobs") + os.sep) + r"[0-9a-f]{32}" + re.escape(os.sep)
    prefixes: list[tuple[re.Pattern[str], str]] = [
        (re.compile(jobs + "input" + re.escape(os.sep) + r"[a-z0-9]+" + re.escape(os.sep)), ""),
        (re.compile(jobs), ""),
    ]
    roots = [settings.models_dir, settings.data_dir] if settings.data_dir is not None else [settings.models_dir]
    for root in sorted({str(r) for r in roots}, key=len, reverse=True):
        prefixes.append((re.compile(re.escape(root + os.sep)), ""))
    prefixes.append((re.compile(re.escape(str(settings.work_dir))), "<work dir>"))

    def redact(message: str) -> str:
        for pattern, repl in prefixes:
            message = pattern.sub(repl, message)
        for cli, api in _CLI_WORDS.items():
            message = message.replace(cli, api)
        return message

    return redact


# -- request guard: API key, body size, queue admission, timeout -------------------------------------


class _Guard:
    """Pure ASGI middleware checked before any route reads the request.

    - the API key (every path but ``/healthz``), compared in constant time;
    - ``POST /jobs``: refuse at once a body announced larger than the limit or a full queue, and stop
      reading a body that grows past the limit;
    - a deadline to receive the request and start the response (streaming a result is not limited).
    """

    def __init__(self, app: ASGIApp, settings: ServeSettings, service: JobService) -> None:
        self.app = app
        self.settings = settings
        self.service = service
        self.key = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.key is not None and scope["path"] != "/healthz":
            given = headers.get(API_KEY_HEADER, "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, self.key):
                await _json_error(401, f"missing or wrong API key; send it in the {API_KEY_HEADER} header")(
                    scope, receive, send
                )
                return
        limit: int | None = None
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/jobs":
            limit = self.settings.max_upload_bytes
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                await _json_error(413, self._too_large())(scope, receive, send)
                return
            if self.service.queue_full():
                queue_full = QueueFullError("the job queue is full; try again later", self.service.retry_after())
                await _json_error(429, str(queue_full), {"Retry-After": str(queue_full.retry_after)})(
                    scope, receive, send
                )
                return
        await self._guarded(scope, receive, send, limit)

    def _too_large(self) -> str:
        return f"the request is larger than this server accepts ({self.settings.max_upload_bytes} bytes)"

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int | None) -> None:
        state = {"received": 0, "body_done": False, "started": False, "too_large": False, "replaced": False}
        deadline = anyio.current_time() + self.settings.request_timeout_seconds
        cancel = anyio.CancelScope(deadline=deadline)

        async def receive_guarded() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if limit is not None and state["received"] > limit:
                    state["too_large"] = True
                    raise HTTPException(413, self._too_large())
                if not message.get("more_body", False):
                    state["body_done"] = True
            return message

        async def send_guarded(message: Message) -> None:
            if state["replaced"]:  # the app's answer to a body that was cut off is dropped
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                cancel.deadline = math.inf  # streaming the response is not limited
                if state["too_large"] and message["status"] != 413:
                    state["replaced"] = True
                    await _json_error(413, self._too_large())(scope, receive, send)
                    return
            await send(message)

        with cancel:
            await self.app(scope, receive_guarded, send_guarded)
        if cancel.cancelled_caught and not state["started"]:
            timeout = self.settings.request_timeout_seconds
            if state["body_done"] or limit is None:
                await _json_error(503, f"the server did not answer within {timeout:g} s; try again later")(
                    scope, receive, send
                )
            else:
                await _json_error(408, f"the request did not arrive within {timeout:g} s; send it faster")(
                    scope, receive, send
                )


# -- inputs ------------------------------------------------------------------------------------------


def _safe_name(filename: str | None, fallback: str) -> str:
    name = _UNSAFE_NAME.sub("_", Path(filename or "").name)[-100:].lstrip(".")
    return name or fallback


@dataclass
class _Submission:
    """The form of ``POST /jobs``, as received."""

    model: str
    image: UploadFile | None
    metadata: UploadFile | None
    udm2: UploadFile | None
    labels: UploadFile | None
    path: str | None
    metadata_path: str | None
    udm2_path: str | None
    labels_path: str | None
    product: str
    polygonize: bool
    median_size: int
    simplify: float
    min_area: float
    label_field: str
    crop_classes: str


class _Inputs:
    """Turns a submission into a validated :class:`JobRequest` (runs in a worker thread)."""

    def __init__(self, settings: ServeSettings, service: JobService) -> None:
        self.settings = settings
        self.service = service
        self.root = settings.data_dir.resolve() if settings.data_dir is not None else None

    def _inside(self, path: Path, value: str, what: str) -> Path:
        assert self.root is not None
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:
            raise HTTPException(400, f"{what} path {value!r} cannot be resolved ({type(exc).__name__})") from exc
        if not resolved.is_relative_to(self.root):
            raise HTTPException(403, f"{what} path {value!r} leads outside the server's data directory")
        return resolved

    def data_path(self, value: str, what: str) -> Path:
        """Resolve a client's path inside the data directory; refuse ``..``, symlink escapes, missing files."""
        if self.root is None:
            raise HTTPException(
                400, f"this server has no data directory: upload the {what} instead (or start it with --data-dir)"
            )
        if "\x00" in value or not value.strip():
            raise HTTPException(400, f"{what} path {value!r} is not a valid path")
        candidate = Path(value)
        if ".." in candidate.parts:
            raise HTTPException(403, f"{what} path {value!r} contains '..'; give a path inside the data directory")
        resolved = self._inside(candidate if candidate.is_absolute() else self.root / candidate, value, what)
        if not resolved.exists():
            raise HTTPException(404, f"{what} {value!r} does not exist in the server's data directory")
        return resolved

    def save_upload(self, upload: UploadFile, job_id: str, what: str) -> Path:
        """Copy an upload into the job's input folder, checking its type."""
        name = _safe_name(upload.filename, what)
        head = upload.file.read(4)
        upload.file.seek(0)
        if not head:
            raise HTTPException(400, f"the {what} upload {name} is empty")
        if what in ("image", "udm2") and head not in _TIFF_MAGIC:
            raise HTTPException(415, f"the {what} upload {name} is not a GeoTIFF (it has no TIFF header)")
        if what == "labels" and Path(name).suffix.lower() not in _LABEL_SUFFIXES:
            raise HTTPException(
                415, f"the labels upload {name} must be GeoJSON (.geojson), a GeoPackage (.gpkg) or a label GeoTIFF"
            )
        folder = self.service.input_dir(job_id) / what
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / name
        with open(dest, "wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        return dest

    def _one(self, sub: _Submission, job_id: str, what: str) -> Path | None:
        upload: UploadFile | None = getattr(sub, what)
        value: str | None = getattr(sub, "path" if what == "image" else f"{what}_path")
        if upload is not None and value is not None:
            raise HTTPException(400, f"give the {what} either as an upload or as a path, not both")
        if upload is not None:
            return self.save_upload(upload, job_id, what)
        if value is not None:
            return self.data_path(value, what)
        return None

    def prepare(self, sub: _Submission, job_id: str) -> JobRequest:
        """Save uploads, resolve paths, open the scene and check it fits the model and the limits."""
        from cropseg import raster_io, vector_io
        from cropseg.manifest import MANIFEST_NAME
        from cropseg.scene import find_scene_files, open_scene

        image = self._one(sub, job_id, "image")
        if image is None:
            raise HTTPException(
                400, "give the scene as an 'image' upload or as a 'path' inside the server's data directory"
            )
        metadata = self._one(sub, job_id, "metadata")
        udm2 = self._one(sub, job_id, "udm2")
        labels = self._one(sub, job_id, "labels")
        if sub.path is not None:  # find the metadata XML and UDM2 beside it, inside the data directory only
            folder = image if image.is_dir() else image.parent
            if (folder / MANIFEST_NAME).exists():
                self._inside(folder / MANIFEST_NAME, sub.path, "manifest of")
            found_image, found_xml, found_udm = find_scene_files(image)
            image = self._inside(found_image, sub.path, "image")
            if metadata is None and found_xml is not None:
                metadata = self._inside(found_xml, sub.path, "metadata of")
            if udm2 is None and found_udm is not None:
                udm2 = self._inside(found_udm, sub.path, "UDM2 of")
        scene = open_scene(
            image, metadata, udm2, product=sub.product,  # type: ignore[arg-type]
            mask_haze=self.settings.config.radiometry.mask_haze, discover=False,
        )
        pixels = scene.grid.width * scene.grid.height
        if pixels > self.settings.max_scene_pixels:
            raise HTTPException(
                413,
                f"the scene has {scene.grid.width} x {scene.grid.height} = {pixels} pixels; this server predicts "
                f"at most {self.settings.max_scene_pixels}",
            )
        bands = list(self.service.registry.card(sub.model).get("features", {}).get("bands", []))
        if scene.band_count != len(bands):
            raise InvalidRasterError(
                f"model {sub.model!r} was trained on {len(bands)} bands ({', '.join(map(str, bands))}) but the image "
                f"has {scene.band_count}; give an image with the same bands"
            )
        if labels is not None:
            if vector_io.is_raster_path(labels):
                raster_io.read_info(labels, "labels")
            else:
                vector_io.read_vector(labels, "labels")
        uploaded = sub.image is not None
        source = _safe_name(sub.image.filename, "image") if sub.image is not None else str(sub.path)
        classes = tuple(c.strip() for c in sub.crop_classes.split(",") if c.strip())
        return JobRequest(
            model=sub.model,
            image=str(scene.image),
            source=source,
            metadata=str(scene.metadata) if scene.metadata else None,
            udm2=str(scene.udm2) if scene.udm2 else None,
            labels=str(labels) if labels else None,
            product=scene.product,
            polygonize=sub.polygonize,
            median_size=sub.median_size,
            simplify=sub.simplify,
            min_area=sub.min_area,
            label_field=sub.label_field or None,
            crop_classes=classes,
            uploaded=uploaded or any(u is not None for u in (sub.metadata, sub.udm2, sub.labels)),
        )


# -- the app -----------------------------------------------------------------------------------------


class _TiffFile(FileResponse):
    media_type = "image/tiff"


class _GeoJSONFile(FileResponse):
    media_type = "application/geo+json"


class _GeoPackageFile(FileResponse):
    media_type = "application/geopackage+sqlite3"


class _JSONFile(FileResponse):
    media_type = "application/json"


_RESULT_ROUTES: dict[str, tuple[type[FileResponse], dict[str, Any], str]] = {
    "prediction.tif": (
        _TiffFile, {"type": "string", "format": "binary"},
        "The prediction, a uint8 Cloud-Optimized GeoTIFF on the input grid: 1 crop, 0 non-crop, 255 nodata.",
    ),
    "polygons.geojson": (
        _GeoJSONFile, {"type": "object"},
        "Field polygons, RFC 7946 GeoJSON in EPSG:4326 with area_ha (jobs submitted with polygonize=true).",
    ),
    "polygons.gpkg": (
        _GeoPackageFile, {"type": "string", "format": "binary"},
        "Field polygons as a GeoPackage (layer fields) in the image CRS (jobs submitted with polygonize=true).",
    ),
    "metrics.json": (
        _JSONFile, {"type": "object"},
        "Classification report, crop IoU and confusion matrix (jobs submitted with labels).",
    ),
}


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app of ``cropseg serve``; its lifespan starts and stops the job workers."""
    redact = _make_redact(settings)
    registry = ModelRegistry(settings.models_dir)
    service = JobService(
        settings.work_dir,
        registry,
        workers=settings.workers,
        queue_size=settings.queue_size,
        retention_seconds=settings.retention_seconds,
        cleanup_interval=settings.cleanup_interval_seconds,
        config=settings.config,
        redact=redact,
    )
    inputs = _Inputs(settings, service)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not service.running:
            await run_in_threadpool(service.start)
        log.info(
            "cropseg serve: %d model(s) in %s, work directory %s, %d worker(s), queue of %d",
            len(registry.names()), settings.models_dir, settings.work_dir, settings.workers, settings.queue_size,
        )
        try:
            yield
        finally:
            await run_in_threadpool(service.stop, settings.shutdown_timeout_seconds)

    app = FastAPIOffline(  # /docs and /redoc from the wheel's own Swagger UI / ReDoc files, not a CDN
        title="cropseg",
        version=__version__,
        summary="Crop / non-crop segmentation of satellite scenes as a service.",
        description=(
            "Submit a scene (upload or path in the server's data directory) with `POST /jobs`, poll "
            "`GET /jobs/{id}`, then download the prediction COG, field polygons and metrics. "
            + (f"Every route but `/healthz` needs the `{API_KEY_HEADER}` header." if settings.api_key else "")
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    app.add_middleware(_Guard, settings=settings, service=service)

    @app.exception_handler(CropSegError)
    async def cropseg_error(request: Request, exc: CropSegError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
        return _json_error(status, redact(str(exc)), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return _json_error(422, "; ".join(parts) or "invalid request")

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The server's API key.")

    def require_key(key: Annotated[str | None, Depends(key_header)]) -> None:
        expected = settings.api_key
        if expected is not None and not hmac.compare_digest((key or "").encode(), expected.encode()):
            raise HTTPException(401, f"missing or wrong API key; send it in the {API_KEY_HEADER} header")

    auth = (401,) if settings.api_key else ()
    router = APIRouter(dependencies=[Depends(require_key)] if settings.api_key else [])

    @app.get("/healthz", response_model=HealthOut, tags=["service"], summary="Liveness")
    async def healthz() -> HealthOut:
        """Answers while the server is up; needs no API key."""
        return HealthOut(version=__version__)

    @router.get("/models", response_model=list[ModelOut], tags=["models"], responses=_error_responses(*auth))
    async def list_models() -> list[ModelOut]:
        """Every valid model under the models folder, with its card."""
        cards = await run_in_threadpool(registry.cards)
        return [ModelOut(name=name, card=card) for name, card in cards]

    @router.get(
        "/models/{name}", response_model=ModelOut, tags=["models"], responses=_error_responses(*auth, 404, 422)
    )
    async def get_model(name: Annotated[str, PathParam(min_length=1, max_length=128)]) -> ModelOut:
        """One model and its card (422 when its directory holds no valid card)."""
        card = await run_in_threadpool(registry.card, name)
        return ModelOut(name=name, card=card)

    @router.post(
        "/jobs",
        status_code=202,
        response_model=JobOut,
        tags=["jobs"],
        responses=_error_responses(*auth, 400, 403, 404, 408, 413, 415, 422, 429, 503),
    )
    async def submit_job(
        model: Annotated[str, Form(min_length=1, max_length=128, description="Name of a model (GET /models).")],
        image: Annotated[UploadFile | None, File(description="The image GeoTIFF (or give path).")] = None,
        metadata: Annotated[UploadFile | None, File(description="Planet metadata XML of the image.")] = None,
        udm2: Annotated[UploadFile | None, File(description="UDM2 usable-data mask of the image.")] = None,
        labels: Annotated[
            UploadFile | None, File(description="Ground truth (GeoJSON, GeoPackage or label GeoTIFF): adds metrics.")
        ] = None,
        path: Annotated[
            str | None,
            Form(max_length=4096, description="Image file or scene folder, relative to the server's data directory."),
        ] = None,
        metadata_path: Annotated[str | None, Form(max_length=4096, description="Metadata XML in the data dir.")] = None,
        udm2_path: Annotated[str | None, Form(max_length=4096, description="UDM2 in the data directory.")] = None,
        labels_path: Annotated[str | None, Form(max_length=4096, description="Ground truth in the data dir.")] = None,
        product: Annotated[
            Literal["auto", "analytic", "analytic_sr"],
            Form(description="analytic: DN x XML coefficient; analytic_sr: DN / 10000; auto: from the XML."),
        ] = "auto",
        polygonize: Annotated[bool, Form(description="Also trace field polygons.")] = False,
        median_size: Annotated[int, Form(ge=1, le=101, description="Median blur window (odd; 1 = off).")] = 5,
        simplify: Annotated[
            float, Form(ge=0, le=1e6, allow_inf_nan=False, description="Simplification tolerance (CRS units).")
        ] = 3.0,
        min_area: Annotated[
            float, Form(ge=0, le=1e12, allow_inf_nan=False, description="Drop polygons under this many m2.")
        ] = 2500.0,
        label_field: Annotated[str, Form(max_length=128, description="Class attribute of the labels.")] = "CLASS1",
        crop_classes: Annotated[
            str, Form(max_length=4096, description="Comma-separated values of label_field that are crop.")
        ] = ",".join(DWR_CROP_CLASSES),
        labels_all_crop: Annotated[
            bool, Form(description="Every labelled polygon is crop (label_field and crop_classes are ignored).")
        ] = False,
    ) -> Response:
        """Queue a prediction job; answers at once with the job (poll `GET /jobs/{id}`)."""
        if median_size % 2 == 0:
            raise HTTPException(422, f"median_size must be odd, got {median_size}")
        if image is None and path is None:
            raise HTTPException(
                400, "give the scene as an 'image' upload or as a 'path' inside the server's data directory"
            )
        await run_in_threadpool(registry.card, model)
        if service.queue_full():
            raise QueueFullError("the job queue is full; try again later", service.retry_after())
        submission = _Submission(
            model=model, image=image, metadata=metadata, udm2=udm2, labels=labels, path=path,
            metadata_path=metadata_path, udm2_path=udm2_path, labels_path=labels_path, product=product,
            polygonize=polygonize, median_size=median_size, simplify=simplify, min_area=min_area,
            label_field="" if labels_all_crop else label_field, crop_classes=crop_classes,
        )
        job_id = service.new_job_id()
        try:
            request = await run_in_threadpool(inputs.prepare, submission, job_id)
            job = service.submit(job_id, request)
        except BaseException:
            shutil.rmtree(service.job_dir(job_id), ignore_errors=True)
            raise
        return _json(_job_out(job, service.queue_position(job_id)), 202, {"Location": f"/jobs/{job_id}"})

    @router.get("/jobs", response_model=JobListOut, tags=["jobs"], responses=_error_responses(*auth, 422))
    async def list_jobs(
        state: Annotated[
            Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query(description="Only these.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many jobs.")] = 100,
    ) -> Response:
        """Jobs, newest first."""
        jobs = service.recent(state, limit)
        return _json(JobListOut(jobs=[_job_out(j, service.queue_position(j.id)) for j in jobs]))

    JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="Job id (32 hex digits).")]

    @router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_error_responses(*auth, 404, 422))
    async def get_job(job_id: JobId) -> Response:
        """A job's state, progress, error and result links."""
        return _json(_job_out(service.get(job_id), service.queue_position(job_id)))

    @router.delete(
        "/jobs/{job_id}",
        status_code=204,
        response_class=Response,
        tags=["jobs"],
        responses=_error_responses(*auth, 404, 422),
    )
    async def delete_job(job_id: JobId) -> Response:
        """Delete a job and its results; a running job is cancelled (it stops at its next window)."""
        await run_in_threadpool(service.delete, job_id)
        return Response(status_code=204)

    def add_result_route(name: str, response_class: type[FileResponse], schema: dict[str, Any], doc: str) -> None:
        media_type = RESULT_MEDIA_TYPES[name]

        async def get_result(job_id: JobId) -> FileResponse:
            path = service.result_path(job_id, name)
            return response_class(path, media_type=media_type, filename=f"{job_id}-{name}")

        get_result.__doc__ = doc
        router.add_api_route(
            f"/jobs/{{job_id}}/{name}",
            get_result,
            methods=["GET"],
            response_class=response_class,
            name=f"get_{name.replace('.', '_')}",
            summary=f"Download {name}",
            tags=["results"],
            responses={
                200: {"description": doc, "content": {media_type: {"schema": schema}}},
                **_error_responses(*auth, 404, 409, 422, file_route=True),
            },
        )

    for name, (response_class, schema, doc) in _RESULT_ROUTES.items():
        add_result_route(name, response_class, schema, doc)

    app.include_router(router)
    return app


def run_server(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve :func:`create_app` with uvicorn until interrupted (Ctrl-C or SIGTERM stop it cleanly).

    Raises:
        OutputError: the work directory is used by another server.
    """
    import uvicorn

    app = create_app(settings)
    service: JobService = app.state.service
    service.start()  # fails here, with a clear message, when another server holds the work directory
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("listening on %s without an API key: anyone who can reach this port can use the server", host)
    try:
        uvicorn.run(
            app, host=host, port=port, log_level=log_level, lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds), timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
    finally:
        if service.running:
            service.stop(settings.shutdown_timeout_seconds)


__all__ = ["API_KEY_HEADER", "ServeSettings", "create_app", "default_work_dir", "run_server", "status_for"]
