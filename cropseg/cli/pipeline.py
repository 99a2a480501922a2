"""Commands of the pipeline stages: synth, train, predict, fields, evaluate, polygonize, demo."""

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
    RefineOpt,
    TileSizeOpt,
    Udm2Opt,
    _classes,
    _config,
    _field,
    _product,
    app,
    console,
    handle_errors,
    progress_bars,
    with_refine,
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
    model: Annotated[
        str | None, typer.Option("--model", help="Model kind: knn (the reference), rf, lgbm, unet. Default: config.")
    ] = None,
    product: ProductOpt = "auto",
    label_field: FieldOpt = "CLASS1",
    crop_classes: ClassesOpt = "G,R,F,P,T,D,C,V",
    config: ConfigOpt = None,
    reweight: Annotated[
        str | None, typer.Option("--reweight", help="none, or rgd (RGD re-weighting; lgbm and unet). Default: config.")
    ] = None,
    rgd_clip: Annotated[float | None, typer.Option("--rgd-clip", help="RGD loss clip T (default: config, 1.0).")]
    = None,
    features: Annotated[
        str | None,
        typer.Option("--features",
                     help="Feature set: reference, spectral, context or texture (default: the model's own)."),
    ] = None,
) -> None:
    """Train a model on one scene and its ground truth."""
    from cropseg.train import train_from_files

    with progress_bars() as progress:
        result = train_from_files(
            image, labels, out, metadata=metadata, udm2=udm2, aoi=aoi, product=_product(product), kind=model,
            label_field=_field(label_field), crop_classes=_classes(crop_classes), config=_config(config),
            progress=progress, reweight=reweight, rgd_clip=rgd_clip, features=features,
        )
    cv = result.report["cv"]
    kind = result.trained.model.kind
    console.print(f"Model {kind}; features: {', '.join(result.trained.features.names)}")
    console.print(f"Cross-validation ({cv['method']}, {cv['scoring']}):")
    for row in cv["table"]:
        score = (
            f"{row['mean_f1_weighted']:.4f} ± {row['std_f1_weighted']:.4f}" if "mean_f1_weighted" in row
            else f"log loss {row['mean_logloss']:.4f}" if "mean_logloss" in row else ""
        )
        console.print(f"  {', '.join(f'{k}={v}' for k, v in row['params'].items())}  {score}")
    chosen = f"k={cv['chosen']['n_neighbors']}" if kind == "knn" else ", ".join(
        f"{k}={v}" for k, v in cv["chosen"].items()
    )
    console.print(
        f"Chosen {chosen}: blocked CV F1 {cv['blocked_cv_f1_weighted']:.4f}, "
        f"random-split CV F1 {cv['random_cv_f1_weighted']:.4f} (random splits overstate accuracy)"
    )
    b = cv["blocked"]
    console.print(
        f"Threshold {cv['threshold']:.2f} (best {cv['threshold_rule']} on blocked out-of-fold predictions): "
        f"non-crop F1 {b['f1_noncrop']:.4f}, crop F1 {b['f1_crop']:.4f}, weighted F1 {b['f1_weighted']:.4f}"
    )
    console.print(f"Model written to {result.model_dir}")


@app.command()
@handle_errors
def predict(
    model: Annotated[Path, typer.Option("--model", help="Model directory from cropseg train.")],
    image: Annotated[
        list[Path],
        typer.Option(
            "--image",
            help="Image GeoTIFF or scene folder; repeat for several scenes, or give a folder of scene folders "
            "or an acquisition's manifest.json.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Prediction COG to write; a folder when several scenes are not mosaicked.")
    ],
    metadata: MetadataOpt = None,
    udm2: Udm2Opt = None,
    product: ProductOpt = "auto",
    config: ConfigOpt = None,
    mosaic: Annotated[
        bool, typer.Option("--mosaic", help="One mosaic of all scenes (per pixel: the clearest scene with data).")
    ] = False,
    scheduler: Annotated[str, typer.Option("--scheduler", help="local (this machine) or dask.")] = "local",
    dask_address: Annotated[
        str | None,
        typer.Option("--dask-address", help="Dask scheduler to use, e.g. tcp://HOST:8786 (default: a LocalCluster)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Local workers, or LocalCluster workers (default: CPU count).")
    ] = None,
    processes: Annotated[
        bool, typer.Option("--processes/--threads", help="Local workers as processes or threads (default).")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue a killed run from OUT.partial/ (default) or redo.")
    ] = True,
    tile_size: TileSizeOpt = None,
    refine: RefineOpt = None,
) -> None:
    """Predict crop / non-crop over whole scenes (uint8 COGs: 1 crop, 0 non-crop, 255 nodata)."""
    from cropseg.mosaic import expand_inputs, predict_many
    from cropseg.predict import predict_from_files
    from cropseg.streaming import Execution

    if scheduler not in ("local", "dask"):
        raise typer.BadParameter(f"{scheduler!r}: choose local or dask", param_hint="--scheduler")
    if dask_address and scheduler != "dask":
        raise typer.BadParameter("--dask-address needs --scheduler dask", param_hint="--dask-address")
    if workers is not None and workers < 1:
        raise typer.BadParameter("give at least 1 worker", param_hint="--workers")
    execution = Execution(
        scheduler="dask" if scheduler == "dask" else "local", workers=workers,
        local_mode="processes" if processes else "threads", dask_address=dask_address,
    )
    scenes = expand_inputs(image)
    cfg = with_refine(_config(config), refine)
    with progress_bars() as progress:
        if len(scenes) == 1 and not mosaic:
            path = predict_from_files(
                model, scenes[0], out, metadata=metadata, udm2=udm2, product=_product(product),
                config=cfg, progress=progress, execution=execution, resume=resume, tile_size=tile_size,
            )
            outputs = [path]
        else:
            result = predict_many(
                model, scenes, out, mosaic=mosaic, metadata=metadata, udm2=udm2, product=_product(product),
                config=cfg, execution=execution, resume=resume, tile_size=tile_size, progress=progress,
            )
            outputs = result.outputs
    if mosaic:
        console.print(f"Mosaic of {len(scenes)} scene(s) written to {outputs[0]}")
    else:
        for path in outputs:
            console.print(f"Prediction written to {path}")


@app.command()
@handle_errors
def fields(
    model: Annotated[Path, typer.Option("--model", help="Model directory from cropseg train.")],
    image: ImageOpt,
    fields_path: Annotated[
        Path,
        typer.Option("--fields", help="Field boundaries (GeoJSON, GeoPackage, shapefile): one polygon per field; "
                     "attributes are kept, classes are not used."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    metadata: MetadataOpt = None,
    udm2: Udm2Opt = None,
    product: ProductOpt = "auto",
    config: ConfigOpt = None,
    tile_size: TileSizeOpt = None,
    refine: RefineOpt = None,
) -> None:
    """Decide each field as a whole: its mean crop probability at the model's threshold (outside fields: per pixel).

    Writes prediction.tif (COG, 1 crop, 0 non-crop, 255 nodata), fields.geojson and fields.gpkg (the fields with
    crop_probability, pixels and decision).
    """
    from cropseg.fields import decide_fields_files

    cfg = with_refine(_config(config), refine)
    with progress_bars() as progress:
        paths = decide_fields_files(
            model, image, fields_path, out, metadata=metadata, udm2=udm2, product=_product(product), config=cfg,
            progress=progress, tile_size=tile_size,
        )
    for path in paths.values():
        console.print(f"Written {path}")


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
