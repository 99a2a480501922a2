"""Per-pixel classifiers on feature vectors.

:class:`KNNModel` is the reference model: scikit-learn's KNeighborsClassifier on per-pixel
reflectance, with k tuned by cross-validation over odd values. Unlike the reference notebook,
the k that cross-validation picks is the k that is fitted. Cross-validation folds are spatial
blocks (pixels of one block never sit on both sides of a split), and the score of a random pixel
split is reported beside it so the optimism of random splits is visible.

Weights are stored with skops and loaded only with an explicit allow-list of types, so a model
file can never unpickle arbitrary objects.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from cropseg.errors import LabelError, ModelError
from cropseg.models.base import Reweight

#: Types a KNN model file may contain beyond skops' defaults.
_KNN_TRUSTED = [
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
]


def load_skops(path: Path, trusted: list[str]) -> Any:
    """Load a skops file, refusing any type outside skops' defaults and ``trusted``."""
    import skops.io as sio  # imported when used: skops loads all of scikit-learn, and with it torch when installed

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelError(f"{path} is not a skops model file ({exc}); retrain the model with cropseg train") from exc
    unexpected = sorted(set(untrusted) - set(trusted))
    if unexpected:
        raise ModelError(
            f"{path} contains types cropseg does not load ({', '.join(unexpected)}); "
            "refusing it. Only load models made by cropseg train"
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise ModelError(f"cannot load {path}: {exc}") from exc


class SklearnPixelModel:
    """What the scikit-learn per-pixel models share: the checks, the CV report, probabilities and skops files."""

    kind: ClassVar[str] = ""
    input: ClassVar[Literal["pixels", "image"]] = "pixels"
    weights_file: ClassVar[str] = "model.skops"
    #: Types the skops file may contain beyond skops' defaults, the estimator class and its name.
    trusted: ClassVar[list[str]] = []
    estimator_type: ClassVar[type[Any]] = object
    estimator_name: ClassVar[str] = ""

    cv_folds: int
    estimator: Any

    def _check_fit(self, groups: np.ndarray, reweight: Reweight) -> None:
        if reweight != "none":
            raise ModelError(f"RGD re-weighting applies to gradient-trained models (lgbm, unet), not to {self.kind}")
        n_groups = len(np.unique(groups))
        if n_groups < self.cv_folds:
            raise LabelError(
                f"the labelled pixels fall in only {n_groups} spatial block(s), fewer than the {self.cv_folds} "
                "cross-validation folds; label a larger area or lower the CV block size"
            )

    def _report(self, search: Any, param: str, oof: np.ndarray, random_oof: np.ndarray, start: float,
                row_key: str | None = None) -> dict[str, Any]:
        """The CV report of a fitted ``GridSearchCV`` over one integer ``param``."""
        res = search.cv_results_
        table = [
            {
                **({row_key: int(v)} if row_key else {}),
                "params": {param: int(v)},
                "mean_f1_weighted": float(m),
                "std_f1_weighted": float(sd),
                "fold_scores": [float(res[f"split{i}_test_score"][j]) for i in range(self.cv_folds)],
            }
            for j, (v, m, sd) in enumerate(
                zip(res[f"param_{param}"], res["mean_test_score"], res["std_test_score"], strict=True)
            )
        ]
        return {
            "method": f"{self.cv_folds}-fold spatially blocked (GroupKFold over blocks)",
            "scoring": "f1_weighted",
            "table": table,
            "chosen": {param: int(search.best_params_[param])},
            "oof_proba": oof.astype(np.float32),
            "random_oof_proba": random_oof.astype(np.float32),
            "seconds": round(time.perf_counter() - start, 2),
        }

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of crop for each row of X, float32."""
        if self.estimator is None:
            raise ModelError("the model is not fitted")
        classes = list(self.estimator.classes_)
        return np.asarray(self.estimator.predict_proba(X)[:, classes.index(1)], dtype=np.float32)

    def save(self, folder: Path) -> Path:
        """Write the estimator with skops into ``folder``; return the file written."""
        if self.estimator is None:
            raise ModelError("the model is not fitted")
        import skops.io as sio

        path = folder / self.weights_file
        sio.dump(self.estimator, path)
        return path

    @classmethod
    def _load_estimator(cls, folder: Path) -> Any:
        """The estimator written by :meth:`save`, refusing unexpected types; all cores for prediction."""
        estimator = load_skops(folder / cls.weights_file, cls.trusted)
        if not isinstance(estimator, cls.estimator_type):
            raise ModelError(f"{folder / cls.weights_file} does not hold a {cls.estimator_name}")
        estimator.n_jobs = -1
        return estimator


class KNNModel(SklearnPixelModel):
    """The reference model: KNN on per-pixel features, k chosen by spatially blocked CV."""

    kind: ClassVar[str] = "knn"
    trusted: ClassVar[list[str]] = _KNN_TRUSTED
    estimator_type: ClassVar[type[Any]] = KNeighborsClassifier
    estimator_name: ClassVar[str] = "KNN classifier"

    def __init__(
        self,
        k_values: tuple[int, ...] = (3, 5, 7, 9, 11, 15, 21, 31),
        cv_folds: int = 3,
        n_jobs: int = -1,
        estimator: KNeighborsClassifier | None = None,
    ) -> None:
        bad = [k for k in k_values if k < 1 or k % 2 == 0]
        if bad or not k_values:
            raise ValueError(f"k values must be odd positive integers, got {list(k_values)}")
        self.k_values = tuple(sorted(k_values))
        self.cv_folds = cv_folds
        self.n_jobs = n_jobs
        self.estimator = estimator

    @property
    def params(self) -> dict[str, Any]:
        """Chosen hyper-parameters."""
        if self.estimator is None:
            return {}
        return {"n_neighbors": int(self.estimator.n_neighbors), "weights": self.estimator.weights}

    def fit(
        self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, reweight: Reweight = "none", rgd_clip: float = 1.0
    ) -> dict[str, Any]:
        """Tune k by spatially blocked CV, refit on all samples with the best k, return the CV report.

        Args:
            X: (n_samples, n_features) float32.
            y: (n_samples,) 1 crop, 0 non-crop.
            groups: (n_samples,) spatial block id of each sample.
            reweight: must be ``none`` (a KNN has no loss to re-weight).
            rgd_clip: unused.
        """
        self._check_fit(groups, reweight)
        ks = [k for k in self.k_values if k < len(y) * (self.cv_folds - 1) / self.cv_folds]
        if not ks:
            raise LabelError(f"only {len(y)} labelled samples: too few for KNN with k in {list(self.k_values)}")
        start = time.perf_counter()
        search = GridSearchCV(
            KNeighborsClassifier(weights="uniform"),
            {"n_neighbors": ks},
            cv=GroupKFold(n_splits=self.cv_folds),
            scoring="f1_weighted",
            n_jobs=self.n_jobs,
            refit=True,
        )
        search.fit(X, y, groups=groups)
        best_k = int(search.best_params_["n_neighbors"])
        self.estimator = search.best_estimator_
        best = KNeighborsClassifier(n_neighbors=best_k)
        oof = cross_val_predict(
            best, X, y, groups=groups, cv=GroupKFold(n_splits=self.cv_folds), method="predict_proba",
            n_jobs=self.n_jobs,
        )[:, 1]
        random_oof = cross_val_predict(
            best, X, y, cv=StratifiedKFold(n_splits=self.cv_folds, shuffle=True, random_state=0),
            method="predict_proba", n_jobs=self.n_jobs,
        )[:, 1]
        return self._report(search, "n_neighbors", oof, random_oof, start, row_key="k")

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> KNNModel:
        """Load weights written by :meth:`save`."""
        estimator = cls._load_estimator(folder)
        return cls(estimator=estimator)
