"""Commands that explain a result: change (lost / new cropland) and report (the HTML report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropseg.cli._app import AoiOpt, ClassesOpt, FieldOpt, _classes, _field, app, console, handle_errors


@app.command()
@handle_errors
def change(
    pred: Annotated[Path, typer.Option("--pred", help="Prediction GeoTIFF.")],
    labels: Annotated[Path, typer.Option("--labels", help="Ground-truth polygons or a label raster.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    aoi: AoiOpt = None,
    label_field: FieldOpt = "CLASS1",
    crop_classes: ClassesOpt = "G,R,F,P,T,D,C,V",
    max_share: Annotated[float, typer.Option(help="A crop field predicted crop on less than this share is lost.")]
    = 0.5,
    min_area: Annotated[float, typer.Option(help="Smallest change reported, in m2.")] = 5000.0,
    min_compactness: Annotated[float, typer.Option(help="Least compactness (4 pi A / P^2) of new cropland.")] = 0.2,
) -> None:
    """Report lost and new cropland: where the prediction contradicts the labels (GeoJSON, GeoPackage, CSV)."""
    from cropseg.change import change_report_files, format_change_summary

    with console.status("Comparing prediction and labels"):
        result = change_report_files(
            pred, labels, out, aoi=aoi, label_field=_field(label_field), crop_classes=_classes(crop_classes),
            max_share=max_share, min_area=min_area, min_compactness=min_compactness,
        )
    typer.echo(format_change_summary(result.summary, result.changes))
    console.print(f"Change report written to {out} (changes.geojson, changes.csv, field_shares.*, change.gpkg)")


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder holding at least a prediction GeoTIFF.")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file (default RUN_DIR/report.html).")] = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    disagreements: Annotated[int, typer.Option(help="Figures of the N largest disagreements.")] = 4,
) -> None:
    """Write a self-contained HTML report (metrics, figures, offline interactive map) of a run folder."""
    from cropseg.report import build_report

    with console.status("Building report"):
        path = build_report(run_dir, out, title=title, n_disagreements=disagreements)
    console.print(f"Report written to {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline)")
