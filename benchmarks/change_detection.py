"""Change-detection precision and recall of `cropseg change` on generated scenes whose change is known.

For each pair of seeds (train, test), two procedural scenes are generated with `cropseg.synth`
(change_rate 0.1 to 0.2), the reference KNN is trained on the train scene's label-year polygons and
predicts the test scene, and the change report compares that prediction with the test scene's
label-year polygons. The truth is the synth `fields` table: fields with `changed` True, lost
(`crop_label` and not `crop_actual`) or new (the reverse).

Scoring, at field level:

- a reported change is correct when at least half of its area lies in truly changed fields of its kind,
  or its IoU with one such field is at least 0.5 (precision = correct / reported);
- a truly changed field of at least `min_area` (the smallest change the report gives) is found when
  reported changes of its kind cover at least half of it, or one has IoU >= 0.5 with it
  (recall = found / truly changed).

The same is run with the image-year truth (`actual.tif`) as the prediction ("oracle"): it checks the
report's logic apart from the model's errors.

Reproduce (about 2 minutes on 2 cores):

    python benchmarks/change_detection.py [--pairs 0:1,2:3,4:5] [--rates 0.1,0.2] [--size 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from cropseg.change import LOST, NEW, change_report_files
from cropseg.predict import predict_from_files
from cropseg.synth import procedural_layout, synthesize, write_synth
from cropseg.train import train_from_files


def score(changes: gpd.GeoDataFrame, truth_fields: gpd.GeoDataFrame, min_area: float) -> dict[str, Any]:
    """Precision / recall of reported changes against the synth fields table, per kind and overall."""
    truth_fields = truth_fields.to_crs(changes.crs) if len(changes) else truth_fields
    out: dict[str, Any] = {}
    tp_r = n_r = tp_t = n_t = 0
    for kind in (LOST, NEW):
        want = truth_fields["changed"] & (truth_fields["crop_label"] if kind == LOST else truth_fields["crop_actual"])
        true_geoms = truth_fields.loc[want].geometry.to_numpy()
        rep = changes.loc[changes["kind"] == kind].geometry.to_numpy() if len(changes) else np.array([])
        true_union = shapely.union_all(true_geoms) if len(true_geoms) else shapely.Polygon()
        rep_union = shapely.union_all(rep) if len(rep) else shapely.Polygon()

        def best_iou(g: Any, others: np.ndarray) -> float:
            if not len(others):
                return 0.0
            inter = shapely.area(shapely.intersection(g, others))
            union = shapely.area(g) + shapely.area(others) - inter
            return float(np.max(inter / np.maximum(union, 1e-9)))

        correct = sum(
            1 for g in rep
            if shapely.area(shapely.intersection(g, true_union)) >= 0.5 * g.area or best_iou(g, true_geoms) >= 0.5
        )
        big = [g for g in true_geoms if g.area >= min_area]
        found = sum(
            1 for g in big
            if shapely.area(shapely.intersection(g, rep_union)) >= 0.5 * g.area or best_iou(g, rep) >= 0.5
        )
        out[kind] = {"reported": len(rep), "correct": correct, "truly_changed": len(big), "found": found}
        tp_r += correct
        n_r += len(rep)
        tp_t += found
        n_t += len(big)
    out["all"] = {"reported": n_r, "correct": tp_r, "truly_changed": n_t, "found": tp_t}
    for v in out.values():
        v["precision"] = v["correct"] / v["reported"] if v["reported"] else float("nan")
        v["recall"] = v["found"] / v["truly_changed"] if v["truly_changed"] else float("nan")
    return out


def scene(work: Path, name: str, seed: int, rate: float, size: float, lon_shift: float) -> dict[str, Path]:
    truth, aoi = procedural_layout(seed=seed, size_m=(size, size), origin_lonlat=(-121.30 + lon_shift, 38.30))
    return write_synth(synthesize(truth, aoi, seed=seed, change_rate=rate), work / name)


def run(pairs: list[tuple[int, int]], rates: list[float], size: float, min_area: float,
        kinds: tuple[str, ...] = ("knn",)) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rate in rates:
            for train_seed, test_seed in pairs:
                t0 = time.perf_counter()
                tag = f"r{rate}_s{train_seed}_{test_seed}"
                train = scene(work, f"{tag}_train", train_seed, rate, size, 0.0)
                test = scene(work, f"{tag}_test", test_seed, rate, size, 0.05)
                fields = gpd.read_file(test["fields"])
                preds: list[tuple[str, Path]] = []
                for kind in kinds:
                    model_dir = work / f"{tag}_{kind}_model"
                    train_from_files(work / f"{tag}_train", train["truth"], model_dir, aoi=train["aoi"], kind=kind)
                    pred = predict_from_files(model_dir, work / f"{tag}_test", work / f"{tag}_{kind}.tif")
                    preds.append((kind, pred))
                for model, p in (*preds, ("oracle", test["actual"])):
                    rep = change_report_files(
                        p, test["truth"], work / f"{tag}_{model}_change", aoi=test["aoi"], min_area=min_area
                    )
                    rows.append({"rate": rate, "pair": (train_seed, test_seed), "model": model,
                                 "score": score(rep.changes, fields, min_area), "seconds": time.perf_counter() - t0})
    return rows


def _fmt(x: float) -> str:
    return "  n/a" if x != x else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default="0:1,2:3,4:5", help="train:test seed pairs")
    ap.add_argument("--rates", default="0.1,0.2", help="change rates")
    ap.add_argument("--size", type=float, default=3000.0, help="scene size in metres")
    ap.add_argument("--min-area", type=float, default=5000.0, help="smallest change reported and scored (m2)")
    ap.add_argument("--models", default="knn", help="comma-separated model kinds whose predictions are scored")
    args = ap.parse_args()
    pairs = [(int(a), int(b)) for a, b in (p.split(":") for p in args.pairs.split(","))]
    rates = [float(r) for r in args.rates.split(",")]
    rows = run(pairs, rates, args.size, args.min_area, tuple(args.models.split(",")))
    print(f"{'rate':>5} {'seeds':>7} {'model':>7} | {'kind':>4} {'reported':>8} {'correct':>7} {'changed':>7} "
          f"{'found':>5} {'precision':>9} {'recall':>7}")
    totals: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        for kind in (LOST, NEW, "all"):
            s = r["score"][kind]
            print(f"{r['rate']:>5} {r['pair'][0]:>3}:{r['pair'][1]:<3} {r['model']:>7} | {kind:>4} {s['reported']:>8} "
                  f"{s['correct']:>7} {s['truly_changed']:>7} {s['found']:>5} {_fmt(s['precision']):>9} "
                  f"{_fmt(s['recall']):>7}")
            t = totals.setdefault((r["model"], kind), [0, 0, 0, 0])
            for i, key in enumerate(("reported", "correct", "truly_changed", "found")):
                t[i] += s[key]
    print("\npooled over all scenes:")
    for (model, kind), (rep, cor, chg, fnd) in totals.items():
        print(f"  {model:>7} {kind:>4}: precision {_fmt(cor / rep if rep else float('nan'))} ({cor}/{rep}), "
              f"recall {_fmt(fnd / chg if chg else float('nan'))} ({fnd}/{chg})")
    print(f"\nreproduce: python benchmarks/change_detection.py --pairs {args.pairs} --rates {args.rates} "
          f"--size {args.size:g} --min-area {args.min_area:g} --models {args.models}")


if __name__ == "__main__":
    main()
