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

__all__ = ["app", "main"]
