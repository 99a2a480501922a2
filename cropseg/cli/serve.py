"""The ``serve`` command: the HTTP inference service (needs the ``serve`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cropseg.cli._app import ConfigOpt, _config, _fail, app, handle_errors


@app.command()
@handle_errors
def serve(
    models: Annotated[Path, typer.Option("--models", help="Folder of model directories (one per model).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Folder whose scenes jobs may name by path (default: none).")
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="Job database, uploads and results (default: ~/.cache/cropseg/serve)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="CROPSEG_API_KEY", show_envvar=True,
            help="Require this key in the X-API-Key header of every request but /healthz.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Jobs that run at the same time.")] = 2,
    queue_size: Annotated[int, typer.Option(min=1, help="Jobs that may wait; beyond, 429 with Retry-After.")] = 64,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload (one job's files), in MiB.")] = 1024,
    max_scene_pixels: Annotated[int, typer.Option(min=1, help="Largest scene, width x height.")] = 250_000_000,
    retention_hours: Annotated[
        float, typer.Option(min=0.001, help="Finished jobs and their results are deleted after this.")
    ] = 168,
    request_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to receive a request and start answering.")
    ] = 300,
    config: ConfigOpt = None,
) -> None:
    """Serve models over HTTP: upload or name a scene, get a prediction COG, polygons and metrics."""
    import importlib.util
    import logging

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if not (importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")):
        missing.append("python-multipart")
    if missing:
        hint = "pip install 'cropseg[serve]'"
        _fail(escape(f"cropseg serve needs the serve extra ({', '.join(missing)} missing): {hint}"))

    from cropseg.serve import ServeSettings, default_work_dir, run_server

    settings = ServeSettings(
        models_dir=models,
        data_dir=data_dir,
        work_dir=work_dir if work_dir is not None else default_work_dir(),
        api_key=api_key or None,
        max_upload_bytes=max(1, int(max_upload_mb * (1 << 20))),
        max_scene_pixels=max_scene_pixels,
        workers=workers,
        queue_size=queue_size,
        retention_seconds=retention_hours * 3600,
        request_timeout_seconds=request_timeout,
        config=_config(config),
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    run_server(settings, host=host, port=port)
