"""The acquisition commands: ``cropseg search``, ``cropseg order``, ``cropseg fetch``.

A thin typer layer over :mod:`cropseg.acquire`: parse, call the API, print with rich. Tables go to
stdout; status lines, progress bars and errors go to stderr. A :class:`~cropseg.errors.CropSegError`
becomes one ``Error:`` line and exit code 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from cropseg.errors import CropSegError

search_app = typer.Typer(name="search", help="Search for imagery over an area of interest.", no_args_is_help=True)
order_app = typer.Typer(name="order", help="Order imagery and download it, verified.", no_args_is_help=True)
fetch_app = typer.Typer(name="fetch", help="Fetch analysis-ready imagery (no account needed).", no_args_is_help=True)



@search_app.callback()
def _search() -> None:
    """Search for imagery over an area of interest."""


@order_app.callback()
def _order() -> None:
    """Order imagery and download it, verified."""


@fetch_app.callback()
def _fetch() -> None:
    """Fetch analysis-ready imagery (no account needed)."""


stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)

PLANET_URL = "https://api.planet.com"
EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"

AoiOpt = Annotated[Path, typer.Option("--aoi", help="Area of interest (GeoJSON, GeoPackage, Shapefile, ...).")]
StartOpt = Annotated[str, typer.Option("--start", help="First day, YYYY-MM-DD.")]
EndOpt = Annotated[str, typer.Option("--end", help="Last day, YYYY-MM-DD (included).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the candidates as GeoJSON.")]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", help="Planet API key (default: the PL_API_KEY environment variable).")
]
BaseUrlOpt = Annotated[
    str, typer.Option("--base-url", help="Planet API root, e.g. a proxy or enterprise gateway.")
]
ItemTypeOpt = Annotated[str, typer.Option("--item-type", help="Planet item type.")]
StacUrlOpt = Annotated[str, typer.Option("--url", help="STAC API root (default: Element84 Earth Search).")]
CollectionOpt = Annotated[str, typer.Option("--collection", help="STAC collection (Sentinel-2 L2A).")]
RetriesOpt = Annotated[int, typer.Option("--max-retries", help="Retries of 429 / 5xx / dropped connections.")]
BackoffOpt = Annotated[float, typer.Option("--retry-backoff", help="Seconds before the first retry.", hidden=True)]


def _fail(exc: CropSegError) -> None:
    stderr.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _retry(max_retries: int, backoff: float) -> Any:
    from cropseg.acquire import RetryPolicy

    return RetryPolicy(max_retries=max_retries, backoff=backoff)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


@contextlib.contextmanager
def _progress() -> Iterator[tuple[Any, Any]]:
    """(status callback, progress callback): a spinner status line above one download bar per file."""
    line = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=stderr)
    bars = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr,
    )
    status_task = line.add_task("starting", total=None)
    files: dict[str, TaskID] = {}

    def status(message: str) -> None:
        line.update(status_task, description=message)

    def progress(name: str, done: int, total: int) -> None:
        if name not in files:
            files[name] = bars.add_task(name, total=total)
        bars.update(files[name], completed=done, total=total)

    with Live(Group(line, bars), console=stderr, refresh_per_second=8):
        try:
            yield status, progress
        finally:
            line.remove_task(status_task)
    if not stderr.is_terminal:
        stderr.line()  # rich leaves the last frame unterminated when stderr is not a terminal


# --------------------------------------------------------------------------------------------- Planet


@search_app.command("planet")
def search_planet_cmd(
    aoi: AoiOpt,
    start: StartOpt,
    end: EndOpt,
    max_cloud: Annotated[float, typer.Option("--max-cloud", help="Highest cloud_cover, 0..1.")] = 0.1,
    item_type: ItemTypeOpt = "PSScene",
    json_out: JsonOpt = None,
    api_key: KeyOpt = None,
    base_url: BaseUrlOpt = PLANET_URL,
    max_retries: RetriesOpt = 5,
    retry_backoff: BackoffOpt = 1.0,
) -> None:
    """Search Planet's Data API: scenes over the AOI in the date range, best candidates first."""
    try:
        from cropseg.acquire import search_planet

        with stderr.status("Searching Planet") as line:
            result = search_planet(
                aoi, start, end, max_cloud=max_cloud, item_type=item_type, api_key=api_key, base_url=base_url,
                retry=_retry(max_retries, retry_backoff), status=lambda m: line.update(m),
            )
        table = Table(title=f"{len(result.candidates)} {item_type} scene(s), best first")
        for col in ("#", "id", "acquired", "cloud", "clear", "AOI"):
            table.add_column(col, justify="left" if col in ("id", "acquired") else "right", no_wrap=True)
        for rank, c in enumerate(result.candidates, start=1):
            when = c.acquired[:16].replace("T", " ")
            table.add_row(str(rank), c.id, when, _pct(c.cloud_cover), _pct(c.clear), _pct(c.coverage))
        _show_candidates(table, result.to_geojson, json_out)
    except CropSegError as exc:
        _fail(exc)


def _show_candidates(table: Table, geojson: Callable[[], dict[str, Any]], json_out: Path | None) -> None:
    """Print a search's table; write its candidates as GeoJSON when asked."""
    from cropseg.acquire._common import write_json

    stdout.print(table)
    if json_out is not None:
        write_json(json_out, geojson())
        stderr.print(f"Candidates written to {json_out}")


@order_app.command("planet")
def order_planet_cmd(
    aoi: AoiOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder (ready for cropseg train / predict).")],
    ids: Annotated[str | None, typer.Option("--ids", help="Item ids to order, comma-separated.")] = None,
    best: Annotated[int | None, typer.Option("--best", help="Order the N best scenes of a search instead.")] = None,
    start: Annotated[str | None, typer.Option("--start", help="Search start for --best, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Search end for --best, YYYY-MM-DD (included).")] = None,
    max_cloud: Annotated[float, typer.Option("--max-cloud", help="Highest cloud_cover for --best, 0..1.")] = 0.1,
    item_type: ItemTypeOpt = "PSScene",
    bundle: Annotated[str, typer.Option("--bundle", help="Product bundle.")] = "analytic_sr_udm2",
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clip the scenes to the AOI server-side.")] = False,
    api_key: KeyOpt = None,
    base_url: BaseUrlOpt = PLANET_URL,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="Seconds between order polls.")] = 10.0,
    max_retries: RetriesOpt = 5,
    retry_backoff: BackoffOpt = 1.0,
) -> None:
    """Order scenes, wait for the order, download and verify every file (re-run to resume)."""
    try:
        from cropseg.acquire import order_planet

        id_list = ids.split(",") if ids is not None else None
        with _progress() as (status, progress):
            result = order_planet(
                aoi, out, ids=id_list, best=best, start=start, end=end, max_cloud=max_cloud, item_type=item_type,
                bundle=bundle, clip=clip, api_key=api_key, base_url=base_url, poll_interval=poll_interval,
                retry=_retry(max_retries, retry_backoff), status=status, progress=progress,
            )
        if result.skipped:
            stdout.print(f"Order {result.order_id} is already complete in {result.folder}; nothing to do.")
            return
        stdout.print(
            f"Order {result.order_id} ({result.state}): {len(result.files)} file(s) verified, "
            f"{result.downloaded} downloaded now."
        )
        for folder in result.scene_folders:
            stdout.print(f"  scene: {folder}")
        stdout.print(f"Next: cropseg train --image {result.scene_folders[0]} --labels LABELS --out MODEL_DIR")
    except CropSegError as exc:
        _fail(exc)


# --------------------------------------------------------------------------------------------- STAC


@search_app.command("stac")
def search_stac_cmd(
    aoi: AoiOpt,
    start: StartOpt,
    end: EndOpt,
    url: StacUrlOpt = EARTH_SEARCH,
    collection: CollectionOpt = "sentinel-2-l2a",
    max_cloud: Annotated[float, typer.Option("--max-cloud", help="Highest eo:cloud_cover, percent.")] = 10.0,
    max_items: Annotated[int, typer.Option("--max-items", help="Stop after this many items.")] = 100,
    json_out: JsonOpt = None,
    max_retries: RetriesOpt = 5,
    retry_backoff: BackoffOpt = 1.0,
) -> None:
    """Search a STAC API (Sentinel-2 L2A) over the AOI, best candidates first."""
    try:
        from cropseg.acquire import search_stac

        with stderr.status("Searching STAC"):
            result = search_stac(
                aoi, start, end, url=url, collection=collection, max_cloud=max_cloud, max_items=max_items,
                retry=_retry(max_retries, retry_backoff),
            )
        table = Table(title=f"{len(result.candidates)} {collection} item(s), best first")
        for col in ("id", "date", "cloud", "AOI", "baseline", "offset"):
            table.add_column(col, justify="left" if col in ("id", "date") else "right", no_wrap=True)
        for c in result.candidates:
            cloud = "-" if c.cloud_cover is None else f"{c.cloud_cover:.0f}%"
            table.add_row(
                c.id, c.datetime[:10], cloud, _pct(c.coverage), c.processing_baseline or "-", str(c.boa_offset)
            )
        _show_candidates(table, result.to_geojson, json_out)
    except CropSegError as exc:
        _fail(exc)


@fetch_app.command("stac")
def fetch_stac_cmd(
    aoi: AoiOpt,
    start: StartOpt,
    end: EndOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder (scene.tif, udm2.tif, manifest.json).")],
    url: StacUrlOpt = EARTH_SEARCH,
    collection: CollectionOpt = "sentinel-2-l2a",
    max_cloud: Annotated[float, typer.Option("--max-cloud", help="Highest eo:cloud_cover, percent.")] = 10.0,
    max_items: Annotated[int, typer.Option("--max-items", help="Consider at most this many items.")] = 50,
    resolution: Annotated[float, typer.Option("--resolution", help="Output pixel size, metres.")] = 10.0,
    boa_offset: Annotated[
        int | None, typer.Option("--boa-offset", help="DN offset to remove (default: from each item's metadata).")
    ] = None,
    max_retries: RetriesOpt = 5,
    retry_backoff: BackoffOpt = 1.0,
) -> None:
    """Fetch Blue, Green, Red, NIR over the AOI, cloud-masked from the SCL, as scene.tif + udm2.tif."""
    try:
        from cropseg.acquire import fetch_stac

        with _progress() as (status, _bytes):

            def steps(description: str, done: int, total: int) -> None:
                status(f"{description} {done}/{total}")

            result = fetch_stac(
                aoi, out, start, end, url=url, collection=collection, max_cloud=max_cloud, max_items=max_items,
                resolution=resolution, boa_offset_override=boa_offset, retry=_retry(max_retries, retry_backoff),
                status=status, progress=steps,
            )
        if result.skipped:
            stdout.print(f"{result.folder} already holds this scene; nothing to do.")
            return
        stdout.print(
            f"Scene {result.datetime[:10]} from {', '.join(result.item_ids)}: {100 * result.clear_fraction:.0f}% "
            f"of the AOI clear; written to {result.image} and {result.udm2}"
        )
        stdout.print(f"Next: cropseg train --image {result.folder} --labels LABELS --out MODEL_DIR")
    except CropSegError as exc:
        _fail(exc)
