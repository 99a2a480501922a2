"""The typer app and what every command shares: error handling, progress bars, common options."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cropseg.config import Config
from cropseg.errors import CropSegError
from cropseg.progress import ProgressCallback

app = typer.Typer(
    name="cropseg",
    help="Open, local-first crop / non-crop segmentation for satellite imagery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

ImageOpt = Annotated[Path, typer.Option("--image", help="Image GeoTIFF (4-band B,G,R,NIR) or a scene folder.")]
MetadataOpt = Annotated[Path | None, typer.Option("--metadata", help="Planet metadata XML (found beside the image).")]
Udm2Opt = Annotated[Path | None, typer.Option("--udm2", help="UDM2 usable-data mask (found beside the image).")]
ProductOpt = Annotated[
    str, typer.Option("--product", help="analytic (DN x XML coefficient), analytic_sr (DN / 10000) or auto.")
]
AoiOpt = Annotated[Path | None, typer.Option("--aoi", help="Area of interest (any vector format).")]
FieldOpt = Annotated[
    str, typer.Option("--label-field", help="Class attribute of the polygons; '' = every polygon is crop.")
]
ClassesOpt = Annotated[str, typer.Option("--crop-classes", help="Comma-separated values of the field that are crop.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file (see cropseg.config).")]
TileSizeOpt = Annotated[
    int | None, typer.Option("--tile-size", help="Tile side in px, rounded to the blocks (default: config).")
]
RefineOpt = Annotated[
    bool | None,
    typer.Option("--refine/--no-refine", help="Smooth probabilities within the image's fields (guided filter; "
                 "default: config, on for rf and lgbm)."),
]


def with_refine(cfg: Config, refine: bool | None) -> Config:
    """``cfg`` with ``--refine/--no-refine`` applied when given."""
    if refine is None:
        return cfg
    return cfg.replace(predict=dataclasses.replace(cfg.predict, refine="on" if refine else "off"))


def _fail(message: str) -> None:
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def handle_errors(func: F) -> F:
    """Turn cropseg's errors into one message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CropSegError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            console.print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def progress_bars() -> Iterator[ProgressCallback]:
    """A progress callback that drives rich progress bars, one per description."""
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def callback(description: str, completed: int, total: int) -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=total)
        bars.update(tasks[description], completed=completed, total=total)

    with bars:
        yield callback


def _config(path: Path | None) -> Config:
    return Config.from_toml(path) if path else Config()


def _field(value: str) -> str | None:
    return value or None


def _classes(value: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",") if c.strip())


def _product(value: str) -> Any:
    if value not in ("auto", "analytic", "analytic_sr"):
        raise typer.BadParameter(f"{value!r}: choose auto, analytic or analytic_sr", param_hint="--product")
    return value


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except BrokenPipeError:  # e.g. `cropseg evaluate ... | head`
        sys.exit(1)
