"""Random forest on per-pixel features, ``min_samples_leaf`` tuned by spatially blocked CV.

Weights are stored with skops and loaded with an explicit allow-list of types (as for the KNN).
Trees are depth-limited so that model files stay small (tens of MB at most).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold, cross_val_predict

from cropseg.models.base import Reweight
from cropseg.models.pixel import SklearnPixelModel

#: Types a random-forest file may contain beyond skops' defaults.
_RF_TRUSTED = ["sklearn.tree._tree.Tree"]


class ForestModel(SklearnPixelModel):
    """scikit-learn RandomForestClassifier on per-pixel features."""

    kind: ClassVar[str] = "rf"
    trusted: ClassVar[list[str]] = _RF_TRUSTED
    estimator_type: ClassVar[type[Any]] = RandomForestClassifier
    estimator_name: ClassVar[str] = "random forest"

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
        self._check_fit(groups, reweight)
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
        return self._report(search, "min_samples_leaf", oof, random_oof, start)

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> ForestModel:
        """Load a forest written by :meth:`save`, refusing unexpected types."""
        estimator = cls._load_estimator(folder)
        return cls(estimator=estimator)
