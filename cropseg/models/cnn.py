"""A compact U-Net in PyTorch (optional extra ``cropseg[cnn]``; torch is imported only when used).

Architecture (``widths`` = (a, b, c), default (24, 48, 64)), chosen to be cheap on a CPU:

* a per-pixel branch: 1x1 convolution of the input features at full resolution (keeps field
  edges sharp);
* an encoder that starts with a 4 x 4 pixel-unshuffle (each 12 m cell sees its 16 pixels as
  channels, so row and crown texture enter the first layer), then two 3x3 conv blocks at 1/4,
  1/8 and 1/16 resolution (a / b / c channels, max-pool between);
* a decoder (nearest up-sampling, skip concatenation, two conv blocks at 1/8 and 1/4) and a
  pixel-shuffle back to full resolution, fused with the per-pixel branch by 1x1 convolutions.

Windows are predicted with a ``halo`` of context on each side (overlapping windows whose
centres are kept), at offsets that are multiples of the total down-sampling (``stride`` 16),
and the halo covers the network's whole receptive field, so tiled prediction equals whole-image
prediction.

Training (:meth:`UNetModel.fit_image`) draws random 128 x 128 patches (with flips and 90 degree
rotations) from the feature image. Spatial blocks of one fold are held out of the loss (they
are still seen as input context, never as labels); a random 10 % of the remaining labelled
pixels is held out too, which gives the optimistic "random split" score beside the blocked one.
The decision threshold is chosen on the blocked hold-out. With ``reweight="rgd"`` each labelled
pixel's loss in a batch is weighted by ``exp(min(loss, T) / T)`` (normalised to mean 1).

Weights are a torch ``state_dict`` in safetensors (plus the input normalisation), loaded with
``safetensors.torch.load_file`` (no pickle) into an architecture rebuilt from the model card.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from cropseg.errors import CropSegError, LabelError, ModelError
from cropseg.label import CROP, NODATA, NONCROP
from cropseg.models.base import Reweight

if TYPE_CHECKING:
    import torch

#: The hint printed when torch is missing.
INSTALL_HINT = "the U-Net needs PyTorch: pip install 'cropseg[cnn]' (torch 2.13.0 and safetensors)"
_UNSHUFFLE = 4
_POOLS = 2


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CropSegError(INSTALL_HINT) from exc
    return torch


def build_unet(in_channels: int, widths: tuple[int, int, int] = (24, 48, 64)) -> torch.nn.Module:
    """The network (see the module docstring); input (N, C, H, W) with H, W multiples of 16."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional
    f = _UNSHUFFLE

    def block(i: int, o: int, k: int = 3) -> Any:
        return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    a, b, c = widths

    class UNet(nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.pixel = block(in_channels, 8, 1)
            self.enc0 = nn.Sequential(block(in_channels * f * f, a, 1), block(a, a))
            self.enc1 = nn.Sequential(block(a, b), block(b, b))
            self.enc2 = nn.Sequential(block(b, c), block(c, c))
            self.dec1 = nn.Sequential(block(c + b, b), block(b, b))
            self.dec0 = nn.Sequential(block(b + a, a), block(a, a))
            self.up = nn.Conv2d(a, 8 * f * f, 1)
            self.head = nn.Sequential(block(16, 8, 1), nn.Conv2d(8, 1, 1))

        def forward(self, x: Any) -> Any:
            e0 = self.enc0(F.pixel_unshuffle(x, f))
            e1 = self.enc1(F.max_pool2d(e0, 2))
            e2 = self.enc2(F.max_pool2d(e1, 2))
            d1 = self.dec1(torch.cat([F.interpolate(e2, scale_factor=2.0, mode="nearest"), e1], 1))
            d0 = self.dec0(torch.cat([F.interpolate(d1, scale_factor=2.0, mode="nearest"), e0], 1))
            up = F.pixel_shuffle(self.up(d0), f)
            return self.head(torch.cat([up, self.pixel(x)], 1))[:, 0]

    return UNet()


def pick_device(device: str = "auto") -> str:
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    if device != "auto":
        return device
    return "cuda" if _torch().cuda.is_available() else "cpu"


class UNetModel:
    """A compact U-Net on feature windows."""

    kind: ClassVar[str] = "unet"
    input: ClassVar[Literal["pixels", "image"]] = "image"
    weights_file: ClassVar[str] = "model.safetensors"

    def __init__(
        self,
        widths: tuple[int, int, int] = (24, 48, 64),
        steps: int = 1500,
        batch: int = 8,
        patch: int = 128,
        lr: float = 3e-3,
        holdout_fold: int = 0,
        cv_folds: int = 5,
        random_holdout: float = 0.1,
        seed: int = 0,
        device: str = "auto",
        net: Any = None,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        if patch % (_UNSHUFFLE << _POOLS):
            raise ValueError(f"the U-Net patch size must be a multiple of {_UNSHUFFLE << _POOLS}, got {patch}")
        self.widths = tuple(int(w) for w in widths)
        self.steps = steps
        self.batch = batch
        self.patch = patch
        self.lr = lr
        self.holdout_fold = holdout_fold
        self.cv_folds = cv_folds
        self.random_holdout = random_holdout
        self.seed = seed
        self.device = device
        self.net = net
        self.mean = mean
        self.std = std

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the network as its state_dict (the class is built at run time), for process pools and Dask."""
        state = dict(self.__dict__)
        net = state.pop("net")
        if net is not None:
            state["_net_state"] = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        net_state = state.pop("_net_state", None)
        self.__dict__.update(state)
        self.net = None
        if net_state is not None and self.mean is not None:
            torch = _torch()
            a, b, c = self.widths
            net = build_unet(int(self.mean.shape[0]), (a, b, c))
            net.load_state_dict({k: torch.from_numpy(v) for k, v in net_state.items()}, strict=True)
            self.net = net.to(pick_device(self.device)).eval()

    @property
    def halo(self) -> int:
        """Context pixels kept around each predicted window: the network's receptive field.

        An output pixel depends on inputs up to 99 px away (measured by back-propagating from one
        output pixel at each of the 16 phases of the stride), so 112 (a multiple of the stride) makes
        tiled prediction equal to predicting the whole (halo-padded) image at once.
        """
        return 112

    @property
    def stride(self) -> int:
        """Total down-sampling of the network."""
        return _UNSHUFFLE << _POOLS

    @property
    def params(self) -> dict[str, Any]:
        """Architecture and training hyper-parameters."""
        return {
            "widths": list(self.widths),
            "steps": self.steps,
            "batch": self.batch,
            "patch": self.patch,
            "lr": self.lr,
            "halo": self.halo,
        }

    def _normalise(self, features: np.ndarray, valid: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.std is not None
        x = (features - self.mean[:, None, None]) / self.std[:, None, None]
        return np.asarray(np.where(valid[None], x, 0.0), dtype=np.float32)

    def fit_image(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        blocks: np.ndarray,
        *,
        reweight: Reweight = "none",
        rgd_clip: float = 1.0,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Train on a whole scene.

        Args:
            features: float32 (n_features, rows, cols).
            labels: uint8 (rows, cols): 1 crop, 0 non-crop, 255 nodata (no loss there).
            blocks: int (rows, cols) spatial block id of each pixel; the blocks whose id falls in
                fold ``holdout_fold`` of ``cv_folds`` (by a seeded shuffle) are held out of the loss.
            reweight: ``rgd`` for RGD per-pixel re-weighting.
            rgd_clip: the RGD clip ``T``.
            progress: optional ``progress(description, done, total)``.

        Returns:
            The CV report, with ``oof_proba``/``oof_labels`` on held-out blocks and
            ``random_oof_proba``/``random_oof_labels`` on the random hold-out pixels.
        """
        torch = _torch()
        F = torch.nn.functional
        start = time.perf_counter()
        labelled = (labels == CROP) | (labels == NONCROP)
        rows, cols = labels.shape
        if rows < self.patch or cols < self.patch:
            raise LabelError(f"the training image ({rows} x {cols}) is smaller than one U-Net patch ({self.patch})")
        rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        ids = np.unique(blocks[labelled])
        fold_of = dict(zip(ids.tolist(), rng.permutation(len(ids)) % self.cv_folds, strict=True))
        held_ids = np.array([i for i, fold in fold_of.items() if fold == self.holdout_fold])
        held = labelled & np.isin(blocks, held_ids)
        rand_held = labelled & ~held & (rng.random(labels.shape) < self.random_holdout)
        train_lab = np.where(labelled & ~held & ~rand_held, labels, NODATA)
        if not ((train_lab == CROP).any() and (train_lab == NONCROP).any()):
            raise LabelError("after holding out validation blocks, the training labels hold a single class")
        valid = np.isfinite(features).all(axis=0)
        self.mean = features[:, valid].mean(axis=1).astype(np.float32)
        self.std = (features[:, valid].std(axis=1) + 1e-6).astype(np.float32)
        x_all = torch.from_numpy(self._normalise(features, valid))
        y_all = torch.from_numpy(train_lab.astype(np.int64))

        device = pick_device(self.device)
        net = build_unet(features.shape[0], self.widths).to(device)  # type: ignore[arg-type]
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(self.steps, 2))
        # patches only where they hold training labels
        p = self.patch
        s = self.stride
        starts_r = np.arange(0, rows - p + 1, s)
        starts_c = np.arange(0, cols - p + 1, s)
        net.train()
        losses: list[float] = []
        for step in range(self.steps):
            if progress is not None and step % 20 == 0:
                progress("Training the U-Net", step, self.steps)
            r0 = rng.choice(starts_r, self.batch)
            c0 = rng.choice(starts_c, self.batch)
            xb = torch.stack([x_all[:, r : r + p, c : c + p] for r, c in zip(r0, c0, strict=True)])
            yb = torch.stack([y_all[r : r + p, c : c + p] for r, c in zip(r0, c0, strict=True)])
            k = int(rng.integers(4))
            xb, yb = torch.rot90(xb, k, (2, 3)), torch.rot90(yb, k, (1, 2))
            if rng.random() < 0.5:
                xb, yb = xb.flip(3), yb.flip(2)
            mask = yb != NODATA
            if not bool(mask.any()):
                sched.step()
                continue
            xb, yb, mask = xb.to(device), yb.to(device), mask.to(device)
            logits = net(xb)
            loss_px = F.binary_cross_entropy_with_logits(logits, (yb == CROP).float(), reduction="none")[mask]
            if reweight == "rgd":
                w = torch.exp(torch.clamp(loss_px.detach(), max=rgd_clip) / rgd_clip)
                loss = (w / w.mean() * loss_px).mean()
            else:
                loss = loss_px.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        if progress is not None:
            progress("Training the U-Net", self.steps, self.steps)
        self.net = net.eval()
        proba = self.predict_tiled(features, valid)
        return {
            "method": (
                f"blocked hold-out: fold {self.holdout_fold} of {self.cv_folds} of the spatial blocks held out of the "
                f"loss; random hold-out: {self.random_holdout:.0%} of the other labelled pixels"
            ),
            "scoring": "logloss",
            "table": [{"params": self.params, "final_train_loss": float(np.mean(losses[-50:])) if losses else None}],
            "chosen": self.params,
            "oof_proba": proba[held],
            "oof_labels": labels[held],
            "random_oof_proba": proba[rand_held],
            "random_oof_labels": labels[rand_held],
            "heldout_pixels": int(held.sum()),
            "seconds": round(time.perf_counter() - start, 2),
        }

    def predict_proba_image(self, features: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Crop probability float32 (rows, cols) of a feature window (n_features, rows, cols)."""
        if self.net is None or self.mean is None:
            raise ModelError("the model is not fitted")
        torch = _torch()
        if valid is None:
            valid = np.isfinite(features).all(axis=0)
        x = self._normalise(features, valid)
        rows, cols = valid.shape
        s = self.stride
        x = np.pad(x, ((0, 0), (0, (-rows) % s), (0, (-cols) % s)))
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(x)[None].to(device))[0, :rows, :cols]
            return np.asarray(torch.sigmoid(logits).float().cpu().numpy(), dtype=np.float32)

    def predict_tiled(self, features: np.ndarray, valid: np.ndarray, tile: int = 512) -> np.ndarray:
        """Crop probability of a whole feature image, in overlapping windows (centres kept)."""
        rows, cols = valid.shape
        h = self.halo
        out = np.zeros((rows, cols), np.float32)
        padded = np.pad(features, ((0, 0), (h, h), (h, h)))
        pvalid = np.pad(valid, ((h, h), (h, h)))
        for r in range(0, rows, tile):
            for c in range(0, cols, tile):
                r1, c1 = min(r + tile, rows), min(c + tile, cols)
                rs, cs = slice(r, r1 + 2 * h), slice(c, c1 + 2 * h)
                win = self.predict_proba_image(padded[:, rs, cs], pvalid[rs, cs])
                out[r:r1, c:c1] = win[h : h + r1 - r, h : h + c1 - c]
        return out

    def save(self, folder: Path) -> Path:
        """Write the state_dict and the input normalisation as safetensors."""
        if self.net is None or self.mean is None or self.std is None:
            raise ModelError("the model is not fitted")
        torch = _torch()
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        tensors["_input.mean"] = torch.from_numpy(self.mean)
        tensors["_input.std"] = torch.from_numpy(self.std)
        path = folder / self.weights_file
        save_file(tensors, str(path), metadata={"format": "cropseg-unet", "widths": ",".join(map(str, self.widths))})
        return path

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any], device: str = "auto") -> UNetModel:
        """Rebuild the network from the card's parameters and load safetensors weights (strictly)."""
        _torch()
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = folder / cls.weights_file
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path} is not a safetensors file ({exc}); retrain the model") from exc
        try:
            mean = tensors.pop("_input.mean").numpy()
            std = tensors.pop("_input.std").numpy()
            a, b, c = (int(w) for w in params["widths"])
            widths = (a, b, c)
            model = cls(widths=widths, steps=int(params.get("steps", 0)), batch=int(params.get("batch", 8)),
                        patch=int(params.get("patch", 128)), lr=float(params.get("lr", 3e-3)), device=device)
            net = build_unet(int(mean.shape[0]), widths)  # type: ignore[arg-type]
            net.load_state_dict(tensors, strict=True)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(f"{path} does not hold the U-Net its model card describes ({exc}); retrain") from exc
        model.net = net.to(pick_device(device)).eval()
        model.mean, model.std = mean, std
        return model
