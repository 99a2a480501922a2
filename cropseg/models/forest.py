"""Random forest on per-pixel features, ``min_samples_leaf`` tuned by spatially blocked CV.

Weights are stored with skops and loaded with an explicit allow-list of types (as for the KNN).
Trees are depth-limited so that model files stay small (tens of MB at most).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold, cross_val_predict

from cropseg.errors import LabelError, ModelError
from cropseg.models.base import Reweight
from cropseg.models.pixel import load_skops

#: Types a random-forest file may contain beyond skops' defaults.
_RF_TRUSTED = ["sklearn.tree._tree.Tree"]


class ForestModel:
    """scikit-learn RandomForestClassifier on per-pixel features."""

    kind: ClassVar[str] = "rf"
    input: ClassVar[Literal["pixels", "image"]] = "pixels"
    weights_file: ClassVar[str] = "model.skops"

    def __init__(
        self,
        leaf_values: tuple[int, ...] = (10, 50),
        n_estimators: int = 40,
        max_depth: int = 14,
        cv_folds: int = 3,
        seed: int = 0,
        n_jobs: int = -1,
        estimator: RandomForestClassifier | None = None,
    ) -> None:
        if not leaf_values or any(v < 1 for v in leaf_values):
            raise ValueError(f"min_samples_leaf values must be positive, got {list(leaf_values)}")
        self.leaf_values = tuple(leaf_values)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.cv_folds = cv_folds
        self.seed = seed
        self.n_jobs = n_jobs
        self.estimator = estimator

    @property
    def params(self) -> dict[str, Any]:
        """Chosen hyper-parameters."""
        if self.estimator is None:
            return {}
        e = self.estimator
        return {
            "n_estimators": int(e.n_estimators),
            "max_depth": e.max_depth,
            "min_samples_leaf": int(e.min_samples_leaf),
            "max_features": e.max_features,
        }

    def _new(self, leaf: int) -> RandomForestClassifier:
        return RandomForestClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, min_samples_leaf=leaf, max_features="sqrt",
            n_jobs=self.n_jobs, random_state=self.seed,
        )

    def fit(
        self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, reweight: Reweight = "none", rgd_clip: float = 1.0
    ) -> dict[str, Any]:
        """Tune ``min_samples_leaf`` by blocked CV (weighted F1), refit on all samples."""
        if reweight != "none":
            raise ModelError("RGD re-weighting applies to gradient-trained models (lgbm, unet), not to rf")
        n_groups = len(np.unique(groups))
        if n_groups < self.cv_folds:
            raise LabelError(
                f"the labelled pixels fall in only {n_groups} spatial block(s), fewer than the {self.cv_folds} "
                "cross-validation folds; label a larger area or lower the CV block size"
            )
        start = time.perf_counter()
        blocked = GroupKFold(n_splits=self.cv_folds)
        search = GridSearchCV(
            self._new(self.leaf_values[0]), {"min_samples_leaf": list(self.leaf_values)}, cv=blocked,
            scoring="f1_weighted", refit=True,
        )
        search.fit(X, y, groups=groups)
        leaf = int(search.best_params_["min_samples_leaf"])
        self.estimator = search.best_estimator_
        oof = cross_val_predict(self._new(leaf), X, y, groups=groups, cv=blocked, method="predict_proba")[:, 1]
        random_cv = StratifiedKFold(n_splits=self.cv_folds, shuffle=True, random_state=self.seed)
        random_oof = cross_val_predict(self._new(leaf), X, y, cv=random_cv, method="predict_proba")[:, 1]
        res = search.cv_results_
        table = [
            {
                "params": {"min_samples_leaf": int(v)},
                "mean_f1_weighted": float(m),
                "std_f1_weighted": float(s),
                "fold_scores": [float(res[f"split{i}_test_score"][j]) for i in range(self.cv_folds)],
            }
            for j, (v, m, s) in enumerate(
                zip(res["param_min_samples_leaf"], res["mean_test_score"], res["std_test_score"], strict=True)
            )
        ]
        return {
            "method": f"{self.cv_folds}-fold spatially blocked (GroupKFold over blocks)",
            "scoring": "f1_weighted",
            "table": table,
            "chosen": {"min_samples_leaf": leaf},
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
        """Write the forest with skops."""
        if self.estimator is None:
            raise ModelError("the model is not fitted")
        path = folder / self.weights_file
        sio.dump(self.estimator, path)
        return path

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> ForestModel:
        """Load a forest written by :meth:`save`, refusing unexpected types."""
        estimator = load_skops(folder / cls.weights_file, _RF_TRUSTED)
        if not isinstance(estimator, RandomForestClassifier):
            raise ModelError(f"{folder / cls.weights_file} does not hold a random forest")
        estimator.n_jobs = -1
        return cls(estimator=estimator)
