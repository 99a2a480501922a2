"""The command-line interface: a thin typer layer over the Python API.

Each command parses its options, calls one API function and prints the result. Errors that
cropseg raises on purpose (:class:`cropseg.errors.CropSegError`) become one ``Error:`` line on
stderr and exit code 1; usage errors exit with 2 (typer's default). Commands live in one module
per area; importing them here registers them on :data:`app`.
"""

from cropseg.cli import (  # noqa: F401  (importing a command module registers its commands)
    pipeline,
    report,
    serve,
)
from cropseg.cli._app import app, main
from cropseg.cli_acquire import fetch_app, order_app, search_app

app.add_typer(search_app, name="search")
app.add_typer(order_app, name="order")
app.add_typer(fetch_app, name="fetch")

__all__ = ["app", "main"]
