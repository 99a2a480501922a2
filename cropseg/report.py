"""The run report: one self-contained HTML file with metrics, figures and an interactive map.

:func:`build_report` reads a run folder that holds at least a prediction GeoTIFF and takes in
whatever else it finds: metrics JSON (``cropseg evaluate --json``, the demo's ``metrics.json``),
predicted field polygons (``cropseg polygonize``), change outputs (``cropseg change``), and the image,
labels, ground-truth polygons and AOI named in the folder's ``manifest.json`` (or in the metrics'
``inputs``). Where labels are known it adds block-bootstrap confidence intervals and, with
ground-truth polygons and predicted polygons, object-level metrics.

The map is Leaflet, read at build time from the ``xstatic-leaflet`` wheel (a PyPI package that ships
``leaflet.js`` and ``leaflet.css`` as package data) and inlined, with its images as data URIs, so the
file opens with no network. A Content-Security-Policy in the page forbids every request that is not
a ``data:`` URI. Rasters (image, labels, prediction, disagreement) are warped to Web Mercator
(EPSG:3857, Leaflet's CRS) and placed as PNG overlays on their bounds; polygons, per-field shares
and changes are GeoJSON layers with a popup per feature.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject

from cropseg import vector_io
from cropseg.config import DWR_CROP_CLASSES
from cropseg.errors import CropSegError, InputError, InputFileNotFoundError
from cropseg.grid import Grid
from cropseg.label import NODATA, crop_polygons, load_labels
from cropseg.manifest import MANIFEST_NAME, read_manifest
from cropseg.raster_io import atomic_path

WEB_MERCATOR = "EPSG:3857"
_PRED_NAMES = ("prediction.tif", "pred.tif")
_NOT_PRED = ("label", "actual", "udm", "scene", "image", "cover", "truth")
_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "font-src data:; connect-src 'none'"
)


class ReportError(InputError):
    """A run folder that cannot be reported on."""


@dataclass
class RunFiles:
    """What :func:`find_run_files` found in a run folder (None where absent)."""

    run_dir: Path
    prediction: Path
    image: Path | None = None
    labels: Path | None = None
    truth: Path | None = None
    aoi: Path | None = None
    polygons: Path | None = None
    changes: Path | None = None
    field_shares: Path | None = None
    change_summary: Path | None = None
    metrics: list[Path] = field(default_factory=list)
    label_field: str | None = "CLASS1"
    crop_classes: tuple[str, ...] = DWR_CROP_CLASSES


# -- finding the files of a run ---------------------------------------------------------------------


def _resolve(value: Any, run_dir: Path) -> Path | None:
    """A path named in a manifest or metrics file: absolute, relative to the run folder, or to the cwd."""
    if not isinstance(value, str) or not value:
        return None
    p = Path(value)
    if p.is_absolute():
        candidates = [p]
    else:  # as given from the run folder or the cwd, then with leading folders dropped (demo-out/x.tif)
        candidates = [run_dir / p, p, *(run_dir / Path(*p.parts[i:]) for i in range(1, len(p.parts)))]
    return next((c for c in candidates if c.exists()), None)


def _manifest_values(run_dir: Path) -> dict[str, Any]:
    """Keys of the manifest (top level, then stage records, latest last, and their ``files``)."""
    manifest = read_manifest(run_dir) or {}
    out: dict[str, Any] = {}
    for record in [manifest, *manifest.get("stages", [])]:
        if not isinstance(record, dict):
            continue
        nested = record.get("files")
        for src in (record, nested if isinstance(nested, dict) else {}):
            for key, value in src.items():
                if isinstance(value, str | list):
                    out[key] = value
    return out


def _is_mask_tif(path: Path) -> bool:
    try:
        with rasterio.open(path) as ds:
            return bool(ds.count == 1 and ds.dtypes[0] == "uint8" and ds.crs is not None)
    except rasterio.errors.RasterioIOError:
        return False


def _find_prediction(run_dir: Path, values: dict[str, Any]) -> Path:
    named = _resolve(values.get("prediction"), run_dir)
    if named is not None and named.suffix.lower() in (".tif", ".tiff"):
        return named
    for name in _PRED_NAMES:
        if (run_dir / name).is_file():
            return run_dir / name
    tifs = sorted(p for p in run_dir.glob("*.tif*") if not any(h in p.name.lower() for h in _NOT_PRED))
    preds = [p for p in tifs if "pred" in p.name.lower() and _is_mask_tif(p)] or [p for p in tifs if _is_mask_tif(p)]
    if not preds:
        raise ReportError(
            f"{run_dir} holds no prediction GeoTIFF; run `cropseg predict --out {run_dir}/prediction.tif` first"
        )
    return preds[0]


def _is_metrics(obj: Any) -> bool:
    return isinstance(obj, dict) and "report" in obj and "confusion" in obj


def _metrics_entries(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return []
    if _is_metrics(obj):
        return [(path.stem, obj)]
    if isinstance(obj, dict):
        return [(f"{path.stem}: {k}", v) for k, v in obj.items() if _is_metrics(v)]
    return []


def find_run_files(run_dir: str | Path) -> RunFiles:
    """Find a run folder's prediction and whatever else it holds (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputFileNotFoundError(f"run folder {run_dir} does not exist; give a folder holding a prediction")
    values = _manifest_values(run_dir)
    files = RunFiles(run_dir=run_dir, prediction=_find_prediction(run_dir, values))
    for key in ("image", "labels", "truth", "aoi"):
        setattr(files, key, _resolve(values.get(key), run_dir))
    if isinstance(values.get("label_field"), str):
        files.label_field = values["label_field"] or None
    if isinstance(values.get("crop_classes"), list):
        files.crop_classes = tuple(str(c) for c in values["crop_classes"])
    files.metrics = sorted(
        p for p in run_dir.glob("*.json") if p.name != MANIFEST_NAME and _metrics_entries(p)
    )
    if files.labels is None:  # the labels a metrics file was computed against
        for p in files.metrics:
            for _, m in _metrics_entries(p):
                files.labels = files.labels or _resolve((m.get("inputs") or {}).get("labels"), run_dir)
    if files.truth is None and files.labels is not None and not vector_io.is_raster_path(files.labels):
        files.truth = files.labels
    polys = _resolve(values.get("polygons"), run_dir)
    if polys is None:
        cands = [run_dir / n for n in ("fields.geojson", "polygons.geojson", "fields.gpkg")]
        polys = next((p for p in cands if p.is_file()), None)
    files.polygons = polys
    for folder in (run_dir, *sorted(p for p in run_dir.iterdir() if p.is_dir())):
        if (folder / "changes.geojson").is_file():
            files.changes = folder / "changes.geojson"
            shares = folder / "field_shares.geojson"
            files.field_shares = shares if shares.is_file() else None
            cs = folder / "change_summary.json"
            files.change_summary = cs if cs.is_file() else None
            break
    return files


# -- map layers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapGrid:
    """The Web Mercator grid that map overlays are warped onto, and its bounds in lat / lon."""

    grid: Grid
    bounds_latlon: tuple[tuple[float, float], tuple[float, float]]  # ((south, west), (north, east))


def map_grid(grid: Grid, max_px: int = 1200) -> MapGrid:
    """A Web Mercator grid covering ``grid`` at about its resolution, at most ``max_px`` on a side."""
    to_merc = Transformer.from_crs(grid.crs, WEB_MERCATOR, always_xy=True)
    left, bottom, right, top = to_merc.transform_bounds(*grid.bounds, densify_pts=21)
    # the source pixel size in Web Mercator metres, measured at the grid's centre
    cx, cy = grid.transform @ (grid.width / 2, grid.height / 2)
    xs, ys = to_merc.transform([cx, cx + grid.res[0], cx], [cy, cy, cy + grid.res[1]])
    res = max(math.hypot(xs[1] - xs[0], ys[1] - ys[0]), math.hypot(xs[2] - xs[0], ys[2] - ys[0]))
    res = max(res, (right - left) / max_px, (top - bottom) / max_px)
    width, height = max(1, math.ceil((right - left) / res)), max(1, math.ceil((top - bottom) / res))
    g = Grid(Affine(res, 0.0, left, 0.0, -res, top), CRS.from_user_input(WEB_MERCATOR), width, height)
    left, bottom, right, top = g.bounds
    to_ll = Transformer.from_crs(WEB_MERCATOR, "EPSG:4326", always_xy=True)
    west, south = to_ll.transform(left, bottom)
    east, north = to_ll.transform(right, top)
    return MapGrid(g, ((south, west), (north, east)))


def warp(
    array: np.ndarray, src: Grid, dst: Grid, nodata: float, resampling: Resampling = Resampling.nearest
) -> np.ndarray:
    """Warp a (bands, rows, cols) or (rows, cols) array from ``src`` onto ``dst``; outside is ``nodata``."""
    squeeze = array.ndim == 2
    arr = array[None] if squeeze else array
    out = np.full((arr.shape[0], *dst.shape), nodata, dtype=arr.dtype)
    for i in range(arr.shape[0]):
        reproject(
            source=arr[i], destination=out[i], src_transform=src.transform, src_crs=src.crs.to_wkt(),
            src_nodata=nodata, dst_transform=dst.transform, dst_crs=dst.crs.to_wkt(), dst_nodata=nodata,
            resampling=resampling,
        )
    return out[0] if squeeze else out


def png_data_uri(rgba: np.ndarray) -> str:
    """A (rows, cols, 3 or 4) uint8 or [0, 1] float image as a ``data:image/png;base64`` URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, rgba, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Float RGB (rows, cols, 3) in [0, 1] plus a boolean alpha to uint8 RGBA."""
    out = np.zeros((*rgb.shape[:2], 4), dtype=np.uint8)
    out[..., :3] = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    out[..., 3] = np.where(alpha, 255, 0).astype(np.uint8)
    return out


def _mask_layer(mask: np.ndarray, src: Grid, mg: MapGrid, colour: Any) -> str:
    warped = warp(mask, src, mg.grid, NODATA)
    return png_data_uri(_rgba(colour(warped), warped != NODATA))


def _round_coords(obj: Any, digits: int = 6) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, list):
        return [_round_coords(o, digits) for o in obj]
    return obj


def geojson_for_map(
    gdf: gpd.GeoDataFrame, simplify_m: float = 0.0, columns: Sequence[str] | None = None
) -> dict[str, Any]:
    """A GeoDataFrame as a GeoJSON dict in EPSG:4326 for the map: optionally simplified, coordinates to 6 decimals."""
    g = gdf if columns is None else gdf[[c for c in columns if c in gdf.columns] + ["geometry"]]
    if simplify_m > 0 and g.crs is not None and g.crs.is_projected and len(g):
        g = g.set_geometry(g.geometry.simplify(simplify_m, preserve_topology=True))
    g = g.to_crs("EPSG:4326")
    data: dict[str, Any] = json.loads(g.to_json(drop_id=True, na="null"))
    for feat in data.get("features", []):
        geom = feat.get("geometry")
        if geom and "coordinates" in geom:
            geom["coordinates"] = _round_coords(geom["coordinates"])
    return data


# -- Leaflet from the xstatic-leaflet wheel ---------------------------------------------------------


def leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS from the installed ``xstatic-leaflet`` package, ready to inline.

    The CSS's images become data URIs and source-map comments are dropped, so that nothing is
    requested when the page opens.
    """
    from importlib import resources

    try:
        data = resources.files("xstatic.pkg.leaflet") / "data"
        js = (data / "leaflet.js").read_text(encoding="utf-8")
        css = (data / "leaflet.css").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise CropSegError(
            "the HTML report needs Leaflet from the xstatic-leaflet package: pip install xstatic-leaflet"
        ) from exc

    def image(match: re.Match[str]) -> str:
        name = match.group(1).strip("'\"")
        path = data / name
        if not path.is_file():
            return match.group(0)
        mime = "image/svg+xml" if name.endswith(".svg") else "image/png"
        return "url(" + f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii") + ")"

    css = re.sub(r"url\((['\"]?images/[^)'\"]+['\"]?)\)", image, css)
    js = re.sub(r"//# sourceMappingURL=\S*", "", js)
    css = re.sub(r"/\*# sourceMappingURL=.*?\*/", "", css)
    return js, css


# -- HTML pieces ------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def metrics_html(name: str, m: dict[str, Any]) -> str:
    """HTML tables of one metrics dict (pixel report, IoU, confusion, bootstrap CIs, object metrics)."""
    rep = m["report"]
    rows = [[k, rep[k]["precision"], rep[k]["recall"], rep[k]["f1-score"], int(rep[k]["support"])]
            for k in ("crop", "non-crop", "macro avg", "weighted avg") if k in rep]
    support = int(sum(rep[k]["support"] for k in ("crop", "non-crop") if k in rep))
    rows.insert(2, ["accuracy", "", "", rep.get("accuracy", float("nan")), support])
    parts = [f"<h3>{_e(name)}</h3>", '<div class="row">',
             _table(["", "precision", "recall", "F1", "support"], rows, "metrics")]
    cm = m["confusion"]["matrix"]
    parts.append(_table(["truth \\ prediction", "crop", "non-crop"],
                        [["crop", int(cm[0][0]), int(cm[0][1])], ["non-crop", int(cm[1][0]), int(cm[1][1])]],
                        "confusion"))
    parts.append(f'<p class="big">crop IoU <b>{_num(m["crop_iou"])}</b></p></div>')
    ci = m.get("bootstrap")
    if ci:
        pct = round(ci["level"] * 100)
        parts.append(f"<p>{pct}% confidence intervals by spatial block bootstrap ({ci['block']} px tiles, "
                     f"{ci['tiles']} tiles, {ci['n']} replicates):</p>")
        parts.append(_table(["metric", "value", "low", "high", "std. error"],
                            [[k, v["value"], v["low"], v["high"], v["std"]] for k, v in ci["metrics"].items()],
                            "metrics"))
    om = m.get("objects")
    if om:
        parts.append(f"<p>Field (object) metrics: predicted polygons matched one to one to ground-truth fields at "
                     f"IoU &ge; {om['iou_threshold']:g}.</p>")
        parts.append(_table(
            ["fields", "polygons", "matched", "precision", "recall", "F1", "mean IoU", "fields split",
             "polygons merging fields", "fields merged"],
            [[om["n_truth"], om["n_pred"], om["matched"], om["precision"], om["recall"], om["f1"],
              om["mean_matched_iou"], om["over_segmented"], om["under_segmented"], om["merged_fields"]]],
            "metrics"))
    inputs = m.get("inputs")
    if isinstance(inputs, dict):
        parts.append("<p class='small'>inputs: " + ", ".join(f"{_e(k)} <code>{_e(v)}</code>"
                                                             for k, v in inputs.items() if v) + "</p>")
    return "\n".join(parts)


def change_html(summary: dict[str, Any] | None, changes: gpd.GeoDataFrame | None, top: int = 15) -> str:
    """HTML summary and table of the largest changes."""
    parts = ["<h2>Change: lost and new cropland</h2>"]
    if summary:
        cal = summary.get("calibration", {})
        parts.append(_table(
            ["fields", "lost fields", "lost ha", "new regions", "new ha", "pred. crop on label crop",
             "pred. crop on label non-crop"],
            [[summary.get("fields"), summary.get("lost"), summary.get("lost_ha"), summary.get("new"),
              summary.get("new_ha"), cal.get("share_pred_crop_on_label_crop"),
              cal.get("share_pred_crop_on_label_noncrop")]], "metrics"))
    if changes is not None and len(changes):
        cols = [c for c in ("id", "kind", "area_ha", "share_pred_crop", "confidence", "field_id", "label_class")
                if c in changes.columns]
        head = changes[cols].head(top).astype(object)
        rows = []
        for r in head.itertuples(index=False):
            row = []
            for col, v in zip(cols, r, strict=True):
                missing = v is None or (isinstance(v, float) and math.isnan(v))
                row.append(None if missing else int(v) if col in ("id", "field_id") else v)
            rows.append(row)
        parts.append(f"<p>The {min(top, len(changes))} largest of {len(changes)} changes (confidence: 1 when "
                     "the region looks to the model like the scene's land of the other class, 0 like its own):</p>")
        parts.append(_table(cols, [["" if v is None else v for v in r] for r in rows], "metrics"))
    elif changes is not None:
        parts.append("<p>No change found.</p>")
    return "\n".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{leaflet_css}</style>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 1.2em 3em; color: #222; }}
h1 {{ font-size: 1.6em; margin-top: .8em; }}
h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .4em 1.2em .8em 0; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }} th {{ background: #f3f3f3; }}
td:first-child {{ text-align: left; }} .row {{ display: flex; flex-wrap: wrap; align-items: flex-start; }}
.big {{ font-size: 1.2em; margin: .4em 0; }} .small {{ color: #666; font-size: .85em; }}
#map {{ height: 640px; border: 1px solid #bbb; background: #e8e8e8; }}
figure {{ margin: 1em 0; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
.legend {{ background: rgba(255,255,255,.9); padding: 6px 8px; border-radius: 4px; font-size: 12px;
           line-height: 18px; }}
.legend i {{ display: inline-block; width: 14px; height: 12px; margin-right: 5px; vertical-align: -1px; }}
.leaflet-popup-content table {{ margin: 0; }} .leaflet-popup-content td {{ padding: 1px 6px; }}
code {{ font-size: .9em; }} img.cs-raster {{ image-rendering: pixelated; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="small">Generated by cropseg {version} from <code>{run_dir}</code>. This file is self-contained and works
offline.</p>
<h2>Map</h2>
<p>Layers on the right; click a field or a change for its numbers.</p>
<div id="map"></div>
{sections}
<h2>Files</h2>
{files}
<script id="cropseg-data" type="application/json">{data}</script>
<script>{leaflet_js}</script>
<script>
(function () {{
  "use strict";
  var DATA = JSON.parse(document.getElementById("cropseg-data").textContent);
  var map = L.map("map", {{zoomSnap: 0.25, attributionControl: true}});
  map.attributionControl.setPrefix("Leaflet");
  var overlays = {{}};
  function fmt(v) {{
    if (v === null || v === undefined) return "";
    if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(3);
    return String(v);
  }}
  function esc(s) {{
    return String(s).replace(/[&<>"']/g, function (c) {{
      return {{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}}[c];
    }});
  }}
  function popup(title, props) {{
    var rows = Object.keys(props).map(function (k) {{
      return "<tr><td>" + esc(k) + "</td><td>" + esc(fmt(props[k])) + "</td></tr>";
    }}).join("");
    return "<b>" + esc(title) + "</b><table>" + rows + "</table>";
  }}
  DATA.rasters.forEach(function (r) {{
    var layer = L.imageOverlay(r.url, r.bounds, {{opacity: r.opacity, interactive: false, className: "cs-raster"}});
    overlays[r.name] = layer;
    if (r.show) layer.addTo(map);
  }});
  DATA.vectors.forEach(function (v) {{
    var layer = L.geoJSON(v.data, {{
      style: function (f) {{
        var s = Object.assign({{}}, v.style);
        var by = v.style_by && v.style_by[f.properties[v.style_key]];
        if (by) Object.assign(s, by);
        s.className = "cs-" + v.id + " cs-" + v.id + "-" + f.properties[v.id_key];
        return s;
      }},
      onEachFeature: function (f, layer) {{
        layer.bindPopup(popup(v.title + " " + fmt(f.properties[v.id_key]), f.properties), {{maxWidth: 360}});
      }}
    }});
    overlays[v.name] = layer;
    if (v.show) layer.addTo(map);
  }});
  L.control.layers(null, overlays, {{collapsed: false}}).addTo(map);
  L.control.scale({{imperial: false}}).addTo(map);
  var legend = L.control({{position: "bottomleft"}});
  legend.onAdd = function () {{
    var div = L.DomUtil.create("div", "legend");
    div.innerHTML = DATA.legend.map(function (l) {{
      return '<i style="background:' + l[0] + '"></i>' + esc(l[1]);
    }}).join("<br>");
    return div;
  }};
  legend.addTo(map);
  map.fitBounds(DATA.bounds);
  window.cropsegMap = map;
  window.cropsegLayers = overlays;
  window.cropsegReady = true;
}})();
</script>
</body>
</html>
"""


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def _json_for_script(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _clean_nan(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean_nan(v) for v in obj]
    return obj


# -- the report -------------------------------------------------------------------------------------


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    title: str | None = None,
    figures_dir: str | Path | None = None,
    n_disagreements: int = 4,
    max_map_px: int = 1200,
    bootstrap: bool = True,
) -> Path:
    """Write the HTML report of a run folder; return its path.

    Args:
        run_dir: folder holding at least a prediction GeoTIFF (see :func:`find_run_files`).
        out: HTML file to write (default ``run_dir/report.html``).
        title: page title (default from the folder name).
        figures_dir: where the PNG figures also go (default ``figures`` beside ``out``).
        n_disagreements: number of largest-disagreement figures.
        max_map_px: largest side in pixels of the map's raster overlays.
        bootstrap: add block-bootstrap confidence intervals where labels are known.
    """
    from cropseg import __version__ as version
    from cropseg.change import LOST, change_raster, read_mask
    from cropseg.evaluate import bootstrap_ci, object_metrics, pixel_metrics
    from cropseg.visualize import (
        CROP_COLOUR,
        EXTRA_COLOUR,
        LOST_COLOUR,
        MISSED_COLOUR,
        NEW_COLOUR,
        NONCROP_COLOUR,
        class_rgb,
        disagreement_rgb,
        figure_set,
        stretch,
    )

    files = find_run_files(run_dir)
    run_dir = files.run_dir
    out = Path(out) if out is not None else run_dir / "report.html"
    figures_dir = Path(figures_dir) if figures_dir is not None else out.parent / "figures"
    title = title or f"cropseg report: {run_dir.resolve().name}"
    pred, grid = read_mask(files.prediction, "prediction")

    truth: np.ndarray | None = None
    if files.labels is not None:
        truth = load_labels(files.labels, grid, files.aoi, files.label_field, files.crop_classes)
    reflectance = valid = None
    if files.image is not None:
        from cropseg.scene import open_scene

        scene = open_scene(files.image)
        if scene.grid.same_as(grid):
            reflectance, valid = scene.read_reflectance(), scene.read_valid()
    changes = gpd.read_file(files.changes) if files.changes else None
    field_shares = gpd.read_file(files.field_shares) if files.field_shares else None
    change_summary = json.loads(files.change_summary.read_text()) if files.change_summary else None
    polygons = vector_io.read_vector(files.polygons, "polygons") if files.polygons else None
    truth_polys = None
    if files.truth is not None:
        t = vector_io.read_vector(files.truth, "ground truth")
        field_name = files.label_field if files.label_field in t.columns else None
        truth_polys = crop_polygons(t, field_name, files.crop_classes)

    # metrics: the files found, with CIs and object metrics added where possible
    entries: list[tuple[str, dict[str, Any]]] = [e for p in files.metrics for e in _metrics_entries(p)]
    if not entries and truth is not None:
        entries = [("label truth (computed by the report)", pixel_metrics(pred, truth))]
    for _, m in entries:
        labels_used = _resolve((m.get("inputs") or {}).get("labels"), run_dir)
        same = labels_used is None or (files.labels is not None and labels_used.resolve() == files.labels.resolve())
        if bootstrap and "bootstrap" not in m:
            ref = truth if same or labels_used is None else load_labels(
                labels_used, grid, files.aoi, files.label_field, files.crop_classes
            )
            if ref is not None:
                m["bootstrap"] = bootstrap_ci(pred, ref)
        if "objects" not in m and polygons is not None and truth_polys is not None and same:
            m["objects"] = object_metrics(polygons, truth_polys)

    # figures
    change_arr = change_raster(changes, grid) if changes is not None else None
    fig_paths = figure_set(figures_dir, pred, reflectance, valid, truth, change_arr, n=n_disagreements,
                           title=title)

    # map layers
    mg = map_grid(grid, max_map_px)
    rasters: list[dict[str, Any]] = []
    bounds = [list(mg.bounds_latlon[0]), list(mg.bounds_latlon[1])]
    if reflectance is not None and valid is not None:
        ok = valid.copy()
        for name, bands, show in (("Image (true colour)", [2, 1, 0], True), ("Image (false colour)", [3, 2, 1], False)):
            if max(bands) >= reflectance.shape[0]:
                continue
            rgb8 = (stretch(reflectance[bands], ok) * 254 + 1).astype(np.uint8)
            rgb8[~ok] = 0
            warped = warp(np.moveaxis(rgb8, -1, 0), grid, mg.grid, 0, Resampling.bilinear)
            alpha = warp(ok.astype(np.uint8), grid, mg.grid, 0) > 0
            rgba = np.concatenate([np.moveaxis(warped, 0, -1), np.where(alpha, 255, 0).astype(np.uint8)[..., None]], -1)
            rasters.append({"name": name, "url": png_data_uri(rgba), "bounds": bounds, "opacity": 1.0, "show": show})
    if truth is not None:
        rasters.append({"name": "Labels", "url": _mask_layer(truth, grid, mg, class_rgb), "bounds": bounds,
                        "opacity": 0.8, "show": reflectance is None})
    rasters.append({"name": "Prediction", "url": _mask_layer(pred, grid, mg, class_rgb), "bounds": bounds,
                    "opacity": 0.8, "show": reflectance is None and truth is None})
    if truth is not None:
        both = np.where((pred != NODATA) & (truth != NODATA), pred.astype(np.int16) * 2 + truth, -1)
        dis = warp(both.astype(np.int16), grid, mg.grid, -1)
        pw = np.where(dis < 0, NODATA, dis // 2).astype(np.uint8)
        tw = np.where(dis < 0, NODATA, dis % 2).astype(np.uint8)
        alpha = (dis >= 0) & (pw != tw)
        rasters.append({"name": "Disagreement", "url": png_data_uri(_rgba(disagreement_rgb(pw, tw), alpha)),
                        "bounds": bounds, "opacity": 0.9, "show": False})

    vectors: list[dict[str, Any]] = []
    simplify = max(grid.res)
    if polygons is not None:
        p = polygons.copy()
        if "id" not in p.columns:
            p.insert(0, "id", np.arange(1, len(p) + 1))
        vectors.append({"id": "polygons", "name": "Predicted polygons", "title": "Polygon", "id_key": "id",
                        "data": geojson_for_map(p.to_crs(grid.crs), simplify, ["id", "area_ha"]),
                        "style": {"color": "#f5d90a", "weight": 1.5, "fillOpacity": 0.05}, "show": False})
    if field_shares is not None:
        vectors.append({
            "id": "fields", "name": "Fields: share predicted crop", "title": "Field", "id_key": "field_id",
            "data": geojson_for_map(field_shares.to_crs(grid.crs), 0.0,
                                    ["field_id", "label_class", "area_ha", "pixels", "share_pred_crop", "status",
                                     "confidence"]),
            "style": {"color": "#222222", "weight": 1, "fillColor": _hex(CROP_COLOUR), "fillOpacity": 0.1},
            "style_key": "status",
            "style_by": {LOST: {"color": _hex(LOST_COLOUR), "weight": 2.5}}, "show": True,
        })
    if changes is not None:
        vectors.append({
            "id": "changes", "name": "Changes (lost / new cropland)", "title": "Change", "id_key": "id",
            "data": geojson_for_map(changes.to_crs(grid.crs), 0.0,
                                    ["id", "kind", "area_ha", "share_pred_crop", "confidence", "field_id",
                                     "label_class"]),
            "style": {"weight": 2, "fillOpacity": 0.45}, "style_key": "kind",
            "style_by": {LOST: {"color": _hex(LOST_COLOUR), "fillColor": _hex(LOST_COLOUR)},
                         "new": {"color": _hex(NEW_COLOUR), "fillColor": _hex(NEW_COLOUR)}},
            "show": True,
        })
    legend = [[_hex(CROP_COLOUR), "crop"], [_hex(NONCROP_COLOUR), "non-crop"]]
    if truth is not None:
        legend += [[_hex(MISSED_COLOUR), "missed crop (disagreement)"],
                   [_hex(EXTRA_COLOUR), "extra crop (disagreement)"]]
    if changes is not None:
        legend += [[_hex(LOST_COLOUR), "lost cropland"], [_hex(NEW_COLOUR), "new cropland"]]
    data = _clean_nan({"bounds": bounds, "rasters": rasters, "vectors": vectors, "legend": legend})

    # sections
    sections = []
    if entries:
        sections.append("<h2>Scores</h2>")
        sections += [metrics_html(name, m) for name, m in entries]
    else:
        sections.append("<h2>Scores</h2><p>No labels found: add a metrics JSON (<code>cropseg evaluate --json</code>) "
                        "or name the labels in the folder's manifest.json.</p>")
    if changes is not None or change_summary is not None:
        sections.append(change_html(change_summary, changes))
    sections.append("<h2>Figures</h2>")
    for p in fig_paths:
        sections.append(f'<figure><img alt="{_e(p.stem)}" src="{_file_data_uri(p, "image/png")}">'
                        f"<figcaption class='small'>{_e(p.name)}</figcaption></figure>")
    found = [("prediction", files.prediction), ("image", files.image), ("labels", files.labels),
             ("ground-truth polygons", files.truth), ("AOI", files.aoi), ("predicted polygons", files.polygons),
             ("changes", files.changes), ("field shares", files.field_shares)]
    found += [("metrics", p) for p in files.metrics]
    found += [("figure", p) for p in fig_paths]
    files_html = _table(["what", "file"], [[k, str(v)] for k, v in found if v is not None])

    js, css = leaflet_assets()
    page = _PAGE.format(
        csp=_CSP, title=_e(title), leaflet_css=css, version=_e(version), run_dir=_e(run_dir),
        sections="\n".join(sections), files=files_html, data=_json_for_script(data),
        leaflet_js=js.replace("</script", "<\\/script"),
    )
    with atomic_path(out, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


__all__ = [
    "ReportError",
    "RunFiles",
    "build_report",
    "find_run_files",
    "geojson_for_map",
    "leaflet_assets",
    "map_grid",
    "metrics_html",
    "png_data_uri",
    "warp",
]
