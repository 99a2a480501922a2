"""Compiled inference for LightGBM models (optional: ``pip install 'cropseg[fast]'``).

LightGBM's own ``Booster.predict`` walks every tree node by node through generic code. lleaves
compiles the model's trees to native code with LLVM; on this project's 2-core machine it needs
about 5x less CPU per pixel for the same raw scores (equal to LightGBM's to ~1e-15; see
BENCHMARKS.md). cropseg compiles the trees with an identity objective (so lleaves returns raw
scores, also for models trained with a custom objective such as RGD) and applies the model's own
sigmoid, so probabilities match :meth:`cropseg.models.lgbm.LGBMModel.predict_proba`.

Compiling takes from seconds to minutes (it grows with trees x leaves), so the shared object is
cached by the weights' sha256 under ``$CROPSEG_CACHE`` (default ``~/.cache/cropseg``), and the
``auto`` policy compiles only for runs large enough to repay it. The compiled model travels with
the pickled model (its bytes), so process pools and Dask workers on other machines load it
instead of compiling again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from cropseg.errors import ModelError
from cropseg.features import ROW_BLOCK

log = logging.getLogger(__name__)

Accelerate = Literal["auto", "on", "off"]
#: With ``auto``, compile (when no compiled copy is cached) only for runs of at least this many pixels.
#: The default ensemble (40 rounds x 31 leaves) compiles in under a second here, then comes from the cache.
AUTO_COMPILE_PIXELS = 1_000_000


def cache_dir() -> Path:
    """Where compiled models are kept: ``$CROPSEG_CACHE`` or ``~/.cache/cropseg``."""
    return Path(os.environ.get("CROPSEG_CACHE") or Path.home() / ".cache" / "cropseg")


def available() -> bool:
    """Whether lleaves (and a compatible llvmlite) can be imported."""
    try:
        import lleaves  # noqa: F401
    except ImportError:
        return False
    return True


def _raw_model_text(text: str) -> str:
    """The model text with an identity objective, so compiled predictions are raw scores."""
    if re.search(r"(?m)^objective=", text):
        return re.sub(r"(?m)^objective=.*$", "objective=regression", text)
    # a custom objective (RGD) leaves no objective line: add one to the header block
    return re.sub(r"(?m)^(max_feature_idx=.*)$", r"\1\nobjective=regression", text, count=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    from cropseg.models.lgbm import raw_to_proba

    return raw_to_proba(x)


class CompiledLGBM:
    """A LightGBM model's trees compiled by lleaves; a drop-in for its ``predict_proba``."""

    kind: ClassVar[str] = "lgbm"
    input: ClassVar[Literal["pixels", "image"]] = "pixels"
    weights_file: ClassVar[str] = "model.lgb.txt"
    #: The compiled trees read float64 rows (``predict_proba`` copies other input).
    sample_dtype: ClassVar[type] = np.float64
    #: Rows per call: a block converted and classified at once stays in the CPU cache.
    row_block: ClassVar[int] = ROW_BLOCK

    def __init__(self, model_text: str, params: dict[str, Any], threads: int = 1) -> None:
        self.text = _raw_model_text(model_text)
        self.digest = hashlib.sha256(self.text.encode()).hexdigest()
        self._params = dict(params)
        self.threads = threads
        self._compiled: Any = None
        self._so: bytes | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The wrapped model's hyper-parameters."""
        return dict(self._params)

    def _paths(self) -> tuple[Path, Path]:
        folder = cache_dir()
        return folder / f"lleaves-{self.digest[:32]}.txt", folder / f"lleaves-{self.digest[:32]}.so"

    @property
    def cached(self) -> bool:
        """Whether a compiled copy is in this machine's cache."""
        return self._paths()[1].is_file()

    def compile(self) -> CompiledLGBM:
        """Compile (or load the cached compiled copy); safe across processes; returns self."""
        import lleaves

        txt, so = self._paths()
        so.parent.mkdir(parents=True, exist_ok=True)
        if self._so is not None and not so.is_file():
            fd, tmp = tempfile.mkstemp(dir=so.parent, suffix=".so")
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._so)
            os.replace(tmp, so)
        with open(so.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one compiler per cache entry at a time
            if not txt.is_file():
                txt.write_text(self.text)
            model = lleaves.Model(model_file=str(txt))
            if so.is_file():
                model.compile(cache=str(so))
            else:
                part = so.with_name(f".{so.name}.{os.getpid()}.part")
                model.compile(cache=str(part))
                os.replace(part, so)
        self._compiled = model
        self._so = so.read_bytes()
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Crop probability (n,) float32 of (n, n_features) rows, as the LightGBM model gives it."""
        if self._compiled is None:
            self.compile()
        raw = self._compiled.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=self.threads)
        return _sigmoid(np.asarray(raw))

    def save(self, folder: Path) -> Path:  # pragma: no cover - a compiled model is never saved as a model
        """Not supported: save the LightGBM model itself."""
        raise NotImplementedError("save the LightGBM model, not its compiled form")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = None  # ctypes handles do not pickle; the .so bytes do
        return state


def accelerate(trained: Any, mode: Accelerate = "auto", pixels: int = 0) -> Any:
    """``trained`` with its LightGBM trees compiled, when that is possible and worth it; else unchanged.

    Args:
        trained: a :class:`cropseg.models.TrainedModel`.
        mode: ``on`` (compile if needed), ``off``, or ``auto`` (use a cached compiled copy, or compile
            when the run has at least :data:`AUTO_COMPILE_PIXELS` pixels).
        pixels: pixels the run will predict.
    """
    model: Any = getattr(trained, "model", None)
    if mode == "off" or getattr(model, "kind", None) != "lgbm" or getattr(model, "booster", None) is None:
        return trained
    if not available():
        return trained
    compiled = CompiledLGBM(model.booster.model_to_string(), getattr(model, "params", {}))
    if mode == "auto" and not compiled.cached and pixels < AUTO_COMPILE_PIXELS:
        return trained
    try:
        fast = compiled.compile()
    except Exception as exc:  # an lleaves / llvmlite pair that does not work together, a compiler error
        if mode == "on":
            raise ModelError(
                f"cannot compile the LightGBM model with lleaves ({type(exc).__name__}: {exc}); "
                "reinstall with pip install 'cropseg[fast]' (it pins a compatible llvmlite) or use accelerate off"
            ) from exc
        log.warning("compiling the LightGBM model failed (%s); predicting with LightGBM itself", exc)
        return trained
    return dataclasses.replace(trained, model=fast)
