"""LightGBM on per-pixel features, tuned by spatially blocked cross-validation.

Hyper-parameters (``num_leaves`` from a small grid, and the number of boosting rounds) are
chosen by the mean blocked-CV log loss; the fitted booster is written in LightGBM's own text
format (``booster.save_model``) and read back with ``lgb.Booster(model_file=...)``, which parses
text and never unpickles anything.

RGD (``reweight="rgd"``) is a custom objective: at every boosting iteration the per-sample
logistic losses of the current model give weights ``exp(min(loss, T) / T)`` (normalised to mean
1 over the training sample), and the logistic gradient and hessian of each sample are multiplied
by its weight. Gradient boosting sees the whole sample at each iteration, so the "batch" of RGD
is the whole sample (bagging, when on, subsamples the rows after weighting); the weights are
held constant within an iteration, i.e. not differentiated, exactly as in RGD's re-weighted
gradient step. The custom objective starts from a raw score of 0 instead of the class prior,
which the first trees absorb.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from scipy.special import expit

from cropseg.errors import LabelError, ModelError
from cropseg.models.base import Reweight, logistic_loss, rgd_weights

#: Parameters shared by every candidate.
BASE_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "verbose": -1,
}
#: Candidates searched by blocked CV (each also picks its number of rounds).
DEFAULT_GRID: tuple[dict[str, Any], ...] = ({"num_leaves": 15}, {"num_leaves": 63})
#: Boosting rounds are chosen per candidate as the minimum of the mean blocked-fold log loss curve.


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -30, 30))))


def rgd_objective(clip: float) -> Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]:
    """A LightGBM custom objective: logistic loss with RGD weights (see the module docstring)."""

    def objective(preds: np.ndarray, data: Any) -> tuple[np.ndarray, np.ndarray]:
        y = np.asarray(data.get_label())
        p = _sigmoid(preds)
        w = rgd_weights(logistic_loss(y, p), clip)
        base = data.get_weight()
        if base is not None:
            w = w * np.asarray(base)
        return w * (p - y), np.maximum(w * p * (1.0 - p), 1e-12)

    return objective


def _logloss_metric(raw: bool) -> Callable[[np.ndarray, Any], tuple[str, float, bool]]:
    """A LightGBM ``feval``: mean log loss, from raw scores (custom objective) or probabilities (built-in)."""

    def metric(preds: np.ndarray, data: Any) -> tuple[str, float, bool]:
        p = _sigmoid(preds) if raw else np.asarray(preds)
        return "logloss", float(np.mean(logistic_loss(np.asarray(data.get_label()), p))), False

    return metric


def raw_to_proba(raw: np.ndarray) -> np.ndarray:
    """Crop probability, float32, from raw scores: one ``expit`` pass (no overflow, nothing to clip)."""
    return np.asarray(expit(raw), dtype=np.float32)


def booster_proba(booster: Any, X: np.ndarray, num_iteration: int | None = None) -> np.ndarray:
    """Crop probability from a booster's raw scores (works for built-in and custom objectives)."""
    return raw_to_proba(np.asarray(booster.predict(X, raw_score=True, num_iteration=num_iteration)))


class LGBMModel:
    """LightGBM gradient-boosted trees on per-pixel features."""

    kind: ClassVar[str] = "lgbm"
    input: ClassVar[Literal["pixels", "image"]] = "pixels"
    weights_file: ClassVar[str] = "model.lgb.txt"

    def __init__(
        self,
        grid: tuple[dict[str, Any], ...] = DEFAULT_GRID,
        cv_folds: int = 3,
        max_rounds: int = 300,
        seed: int = 0,
        n_jobs: int = 0,
        booster: Any = None,
        chosen: dict[str, Any] | None = None,
    ) -> None:
        if not grid:
            raise ValueError("the LightGBM grid needs at least one candidate")
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be positive, got {max_rounds}")
        self.grid = grid
        self.cv_folds = cv_folds
        self.max_rounds = max_rounds
        self.seed = seed
        self.n_jobs = n_jobs
        self.booster = booster
        self.chosen = dict(chosen or {})

    @property
    def params(self) -> dict[str, Any]:
        """Chosen hyper-parameters."""
        return dict(self.chosen)

    def _train(
        self,
        params: dict[str, Any],
        X: np.ndarray,
        y: np.ndarray,
        rounds: int,
        reweight: Reweight,
        clip: float,
        valid: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[Any, np.ndarray | None]:
        """Train a booster; with ``valid`` (X, y) also return its log loss after each round."""
        import lightgbm as lgb

        # OpenMP threads spin on tiny problems (and on a busy machine): one thread is faster there
        threads = 1 if len(y) < 20_000 else self.n_jobs
        full = {**BASE_PARAMS, **params, "seed": self.seed, "num_threads": threads, "metric": "None"}
        full["objective"] = rgd_objective(clip) if reweight == "rgd" else "binary"
        train_set = lgb.Dataset(X, label=y, free_raw_data=True)
        if valid is None:
            return lgb.train(full, train_set, num_boost_round=rounds), None
        history: dict[str, Any] = {}
        booster = lgb.train(
            full, train_set, num_boost_round=rounds, valid_sets=[lgb.Dataset(valid[0], label=valid[1])],
            valid_names=["valid"], feval=_logloss_metric(raw=reweight == "rgd"),
            callbacks=[lgb.record_evaluation(history)],
        )
        return booster, np.asarray(history["valid"]["logloss"])

    def fit(
        self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, reweight: Reweight = "none", rgd_clip: float = 1.0
    ) -> dict[str, Any]:
        """Tune ``num_leaves`` and the rounds by blocked CV log loss, refit on all samples."""
        from sklearn.model_selection import GroupKFold, StratifiedKFold

        n_groups = len(np.unique(groups))
        if n_groups < self.cv_folds:
            raise LabelError(
                f"the labelled pixels fall in only {n_groups} spatial block(s), fewer than the {self.cv_folds} "
                "cross-validation folds; label a larger area or lower the CV block size"
            )
        start = time.perf_counter()
        folds = list(GroupKFold(n_splits=self.cv_folds).split(X, y, groups))
        table: list[dict[str, Any]] = []
        boosters: list[list[Any]] = []
        for cand in self.grid:
            curves: list[np.ndarray] = []
            fold_boosters: list[Any] = []
            for tr, va in folds:
                booster, curve = self._train(cand, X[tr], y[tr], self.max_rounds, reweight, rgd_clip, (X[va], y[va]))
                assert curve is not None
                curves.append(curve)
                fold_boosters.append(booster)
            mean = np.mean(curves, axis=0)
            best = int(np.argmin(mean))
            table.append(
                {
                    "params": {**cand, "num_boost_round": best + 1},
                    "mean_logloss": float(mean[best]),
                    "fold_logloss": [float(c[best]) for c in curves],
                }
            )
            boosters.append(fold_boosters)
        pick = int(np.argmin([row["mean_logloss"] for row in table]))
        chosen = dict(table[pick]["params"])
        rounds = int(chosen.pop("num_boost_round"))
        oof = np.empty(len(y), np.float32)
        for (_, va), booster in zip(folds, boosters[pick], strict=True):
            oof[va] = booster_proba(booster, X[va], rounds)
        random_oof = np.empty(len(y), np.float32)
        for tr, va in StratifiedKFold(n_splits=self.cv_folds, shuffle=True, random_state=self.seed).split(X, y):
            random_oof[va] = booster_proba(self._train(chosen, X[tr], y[tr], rounds, reweight, rgd_clip)[0], X[va])
        self.booster = self._train(chosen, X, y, rounds, reweight, rgd_clip)[0]
        self.chosen = {**BASE_PARAMS, **chosen, "num_boost_round": rounds, "objective": "binary"}
        if reweight == "rgd":
            self.chosen.update({"objective": "rgd-logistic (custom)", "rgd_clip": rgd_clip})
        return {
            "method": f"{self.cv_folds}-fold spatially blocked (GroupKFold over blocks)",
            "scoring": "logloss",
            "table": table,
            "chosen": {**chosen, "num_boost_round": rounds},
            "oof_proba": oof,
            "random_oof_proba": random_oof,
            "seconds": round(time.perf_counter() - start, 2),
        }

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Crop probability for each row of X, float32."""
        if self.booster is None:
            raise ModelError("the model is not fitted")
        return booster_proba(self.booster, X)

    def save(self, folder: Path) -> Path:
        """Write the booster in LightGBM's text format."""
        if self.booster is None:
            raise ModelError("the model is not fitted")
        path = folder / self.weights_file
        self.booster.save_model(str(path))
        return path

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> LGBMModel:
        """Read a booster written by :meth:`save` (text parsing only)."""
        import lightgbm as lgb

        path = folder / cls.weights_file
        try:
            booster = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as exc:
            raise ModelError(f"{path} is not a LightGBM model file ({exc}); retrain the model") from exc
        return cls(booster=booster, chosen=params)

    @property
    def n_features(self) -> int | None:
        """Number of input features of the fitted booster."""
        return None if self.booster is None else int(self.booster.num_feature())
