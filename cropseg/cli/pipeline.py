"""Commands of the pipeline stages: synth, train, predict, evaluate, polygonize, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cropseg.cli._app import (
    AoiOpt,
    ClassesOpt,
    ConfigOpt,
    FieldOpt,
    ImageOpt,
    MetadataOpt,
    ProductOpt,
    Udm2Opt,
    _classes,
    _config,
    _field,
    _product,
    app,
    console,
    handle_errors,
    progress_bars,
)


@app.command()
@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    labels: Annotated[Path | None, typer.Option("--labels", help="Ground-truth polygons; none: procedural.")] = None,
    aoi: AoiOpt = None,
    label_field: FieldOpt = "CLASS1",
    crop_classes: ClassesOpt = "G,R,F,P,T,D,C,V",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same scene).")] = 0,
    change_rate: Annotated[float, typer.Option(help="Share of fields changed between label and image year.")] = 0.1,
    clouds: Annotated[float, typer.Option(help="Share of the AOI under cloud (0: none).")] = 0.0,
    size_m: Annotated[float, typer.Option(help="Side of the procedural layout in metres (without --labels).")]
    = 3000.0,
) -> None:
    """Generate a PlanetScope-like scene (DN, metadata XML, UDM2, label-year and image-year truth)."""
    from cropseg.synth import run_synth

    with console.status("Synthesizing scene"):
        files = run_synth(
            labels, aoi, out, field=_field(label_field), crop_classes=_classes(crop_classes),
            seed=seed, change_rate=change_rate, clouds=clouds, size_m=(size_m, size_m),
        )
    for name, path in files.items():
        console.print(f"  {name:<10} {path}")


@app.command()
@handle_errors
def train(
    image: ImageOpt,
    labels: Annotated[Path, typer.Option("--labels", help="Ground-truth polygons or a label raster.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    metadata: MetadataOpt = None,
    udm2: Udm2Opt = None,
    aoi: AoiOpt = None,
    model: Annotated[str, typer.Option("--model", help="Model kind.")] = "knn",
    product: ProductOpt = "auto",
    label_field: FieldOpt = "CLASS1",
    crop_classes: ClassesOpt = "G,R,F,P,T,D,C,V",
    config: ConfigOpt = None,
) -> None:
    """Train a model on one scene and its ground truth."""
    from cropseg.train import train_from_files

    with progress_bars() as progress:
        result = train_from_files(
            image, labels, out, metadata=metadata, udm2=udm2, aoi=aoi, product=_product(product), kind=model,
            label_field=_field(label_field), crop_classes=_classes(crop_classes), config=_config(config),
            progress=progress,
        )
    cv = result.report["cv"]
    console.print(f"Cross-validation ({cv['method']}, {cv['scoring']}):")
    for row in cv["table"]:
        console.print(f"  k={row['k']:<3} {row['mean_f1_weighted']:.4f} ± {row['std_f1_weighted']:.4f}")
    console.print(
        f"Chosen k={cv['chosen']['n_neighbors']}: blocked CV F1 {cv['blocked_cv_f1_weighted']:.4f}, "
        f"random-split CV F1 {cv['random_cv_f1_weighted']:.4f} (random splits overstate accuracy)"
    )
    console.print(f"Model written to {result.model_dir}")


@app.command()
@handle_errors
def predict(
    model: Annotated[Path, typer.Option("--model", help="Model directory from cropseg train.")],
    image: ImageOpt,
    out: Annotated[Path, typer.Option("--out", help="Prediction GeoTIFF (COG) to write.")],
    metadata: MetadataOpt = None,
    udm2: Udm2Opt = None,
    product: ProductOpt = "auto",
    config: ConfigOpt = None,
) -> None:
    """Predict crop / non-crop over a whole scene (uint8 COG: 1 crop, 0 non-crop, 255 nodata)."""
    from cropseg.predict import predict_from_files

    with progress_bars() as progress:
        path = predict_from_files(
            model, image, out, metadata=metadata, udm2=udm2, product=_product(product), config=_config(config),
            progress=progress,
        )
    console.print(f"Prediction written to {path}")


@app.command()
@handle_errors
def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Prediction GeoTIFF.")],
    labels: Annotated[Path, typer.Option("--labels", help="Ground-truth polygons or a label raster.")],
    aoi: AoiOpt = None,
    label_field: FieldOpt = "CLASS1",
    crop_classes: ClassesOpt = "G,R,F,P,T,D,C,V",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON.")] = None,
    ci: Annotated[bool, typer.Option("--ci", help="Spatial block bootstrap confidence intervals.")] = False,
    polygons: Annotated[
        Path | None, typer.Option("--polygons", help="Predicted field polygons, for field-level metrics.")
    ] = None,
    iou: Annotated[float, typer.Option(help="IoU of a field match (with --polygons).")] = 0.5,
) -> None:
    """Score a prediction: classification report, crop IoU, confusion matrix (and CIs, field metrics)."""
    from cropseg.evaluate import evaluate_files, format_bootstrap, format_metrics, format_object_metrics
    from cropseg.raster_io import atomic_path

    with console.status("Evaluating"):
        metrics = evaluate_files(
            pred, labels, aoi=aoi, label_field=_field(label_field), crop_classes=_classes(crop_classes),
            ci=ci, polygons=polygons, iou=iou,
        )
    typer.echo(format_metrics(metrics))
    if "bootstrap" in metrics:
        typer.echo("\n" + format_bootstrap(metrics["bootstrap"]))
    if "objects" in metrics:
        typer.echo("\n" + format_object_metrics(metrics["objects"]))
    if json_out:
        with atomic_path(json_out, suffix=".json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        console.print(f"Metrics written to {json_out}")


@app.command()
@handle_errors
def polygonize(
    pred: Annotated[Path, typer.Option("--pred", help="Prediction GeoTIFF.")],
    out: Annotated[Path, typer.Option("--out", help="GeoJSON to write (RFC 7946, EPSG:4326).")],
    gpkg: Annotated[Path | None, typer.Option("--gpkg", help="GeoPackage in the image CRS (default: beside --out).")]
    = None,
    median_size: Annotated[int, typer.Option(help="Median blur window (odd; 1 = off).")] = 5,
    simplify: Annotated[float, typer.Option(help="Simplification tolerance in CRS units.")] = 3.0,
    min_area: Annotated[float, typer.Option(help="Drop polygons under this many m2.")] = 2500.0,
) -> None:
    """Turn a prediction into field polygons (GeoJSON + GeoPackage)."""
    from cropseg.polygonize import polygonize_file

    with console.status("Polygonizing"):
        polys = polygonize_file(pred, out, gpkg=gpkg, median_size=median_size, simplify=simplify, min_area=min_area)
    console.print(f"{len(polys)} polygons, {polys['area_ha'].sum():.1f} ha, written to {out}")


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo-out"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run the whole pipeline offline on generated scenes: synth, train, predict, evaluate, polygonize."""
    from cropseg.demo import run_demo

    with progress_bars() as progress:
        summary = run_demo(out, seed=seed, progress=progress)
    typer.echo(summary["text"])
