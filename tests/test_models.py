import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cropseg.config import Config, TrainConfig
from cropseg.errors import ConfigError, ModelError
from cropseg.features import FEATURE_PRESETS, FeatureSpec, compute_features
from cropseg.models import (
    ForestModel,
    ImageModel,
    KNNModel,
    LGBMModel,
    PixelModel,
    TrainedModel,
    UNetModel,
    load_model,
    save_model,
)
from cropseg.models.base import choose_threshold, rgd_weights, threshold_table
from cropseg.models.lgbm import rgd_objective
from cropseg.predict import predict_proba_window, predict_window
from cropseg.refine import Refinement
from cropseg.testing import predict_tiled
from cropseg.train import cv_summary, fit_image_model, fit_model

pytestmark = pytest.mark.filterwarnings(
    # LightGBM warns that sklearn-style arrays lack feature names only when given DataFrames; torch may warn
    # about NumPy arrays it cannot wrap without a copy
    "ignore:The given NumPy array is not writable:UserWarning",
)


def _blobs(n=900, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.uint8)
    X = rng.normal(size=(n, 4)).astype(np.float32) + y[:, None] * 1.5
    groups = np.arange(n) // 60
    return X, y, groups


def test_torch_and_skops_are_imported_only_when_used():
    """Predicting with LightGBM needs neither torch (the U-Net) nor skops (knn / rf files): the CLI starts without."""
    code = (
        "import sys; import cropseg.cli, cropseg.predict, cropseg.train, cropseg.models; "
        "bad = [m for m in ('torch', 'skops') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_rgd_weights():
    losses = np.array([0.0, 0.5, 1.0, 3.0, 10.0])
    w = rgd_weights(losses, clip=1.0)
    assert w.mean() == pytest.approx(1.0)
    assert np.all(np.diff(w) >= 0)
    assert w[3] == w[4] == w[2]  # clipped at T
    assert w[2] / w[0] == pytest.approx(np.e)
    with pytest.raises(ValueError):
        rgd_weights(losses, 0.0)


def test_rgd_objective_is_weighted_logistic_gradient():
    class Data:
        def get_label(self):
            return np.array([1.0, 0.0, 1.0])

        def get_weight(self):
            return None

    raw = np.array([2.0, 1.0, -3.0])
    grad, hess = rgd_objective(0.5)(raw, Data())
    p = 1 / (1 + np.exp(-raw))
    loss = -np.log(np.where([1, 0, 1], p, 1 - p))
    w = np.exp(np.minimum(loss, 0.5) / 0.5)
    w /= w.mean()
    np.testing.assert_allclose(grad, w * (p - [1, 0, 1]))
    np.testing.assert_allclose(hess, w * p * (1 - p))
    assert grad[2] / (p[2] - 1) > grad[0] / (p[0] - 1)  # the hard sample weighs more


def test_threshold_table_and_choice():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(np.uint8)
    proba = np.clip(y * 0.3 + rng.random(2000) * 0.7, 0, 1)
    table = {round(r["threshold"], 2): r for r in threshold_table(y, proba)}
    for t in (0.2, 0.5, 0.8):
        pred = proba >= t
        assert table[t]["f1_crop"] == pytest.approx(f1_score(y, pred))
        assert table[t]["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    best = choose_threshold(y, proba, "f1_macro")
    assert table[best]["f1_macro"] == max(r["f1_macro"] for r in table.values())
    assert choose_threshold(y, proba, "none") == 0.5
    summary = cv_summary(y, proba, y, proba, "f1_weighted")
    assert summary["gap_f1_weighted"] == 0 and set(summary["blocked"]) >= {"f1_crop", "f1_noncrop"}


def test_every_kind_meets_its_interface():
    assert isinstance(KNNModel(), PixelModel)
    assert isinstance(ForestModel(), PixelModel)
    assert isinstance(LGBMModel(), PixelModel)
    assert isinstance(UNetModel(), ImageModel)
    assert UNetModel().halo % UNetModel().stride == 0


@pytest.mark.parametrize("kind", ["rf", "lgbm"])  # knn: tests/test_train.py
def test_pixel_models_fit_save_load(tmp_path, kind):
    X, y, groups = _blobs()
    cfg = Config().replace(train=TrainConfig(k_values=(5,), lgbm_rounds=50, rf_trees=10))
    trained, cv = fit_model(X, y, groups, FeatureSpec(), kind, cfg)
    assert cv["blocked"]["f1_weighted"] > 0.8 and "random" in cv and 0.05 <= cv["threshold"] <= 0.95
    assert "oof_proba" not in cv
    folder = save_model(trained, tmp_path / kind, extra={"cv": cv})
    loaded = load_model(folder)
    assert loaded.threshold == trained.threshold and loaded.model.kind == kind
    np.testing.assert_array_equal(loaded.predict_proba(X), trained.predict_proba(X))
    card = json.loads((folder / "model.json").read_text())
    assert len(card["weights"]["sha256"]) == 64


def test_lgbm_with_rgd_and_refusals(tmp_path):
    X, y, groups = _blobs()
    cfg = Config().replace(train=TrainConfig(lgbm_rounds=50))
    trained, cv = fit_model(X, y, groups, FeatureSpec(), "lgbm", cfg, reweight="rgd", rgd_clip=0.5)
    assert cv["reweight"] == {"method": "rgd", "clip": 0.5} and cv["blocked"]["f1_weighted"] > 0.8
    folder = save_model(trained, tmp_path / "m")
    card = json.loads((folder / "model.json").read_text())
    assert card["params"]["rgd_clip"] == 0.5 and "lightgbm" in card["software"]
    # a text file that is not a LightGBM model, with a matching digest, is refused with a clear error
    from cropseg.manifest import file_digest

    (folder / "model.lgb.txt").write_text("import os\nos.system('echo pwned')\n")
    card["weights"]["sha256"] = file_digest(folder / "model.lgb.txt")
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a LightGBM model"):
        load_model(folder)
    with pytest.raises(ConfigError, match="gradient-trained"):
        fit_model(X, y, groups, FeatureSpec(), "knn", cfg, reweight="rgd")
    with pytest.raises(ConfigError, match="unknown model"):
        fit_model(X, y, groups, FeatureSpec(), "svm", cfg)


def test_lgbm_card_feature_count_must_match(tmp_path):
    X, y, groups = _blobs()
    trained, _ = fit_model(X, y, groups, FeatureSpec(), "lgbm", Config().replace(train=TrainConfig(lgbm_rounds=20)))
    folder = save_model(trained, tmp_path / "m")
    card = json.loads((folder / "model.json").read_text())
    card["features"] = {**FEATURE_PRESETS["spectral"].to_dict(), "names": FEATURE_PRESETS["spectral"].names}
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="features"):
        load_model(folder)


def test_forest_allow_list_refuses_other_types(tmp_path):
    import skops.io as sio
    from sklearn.neighbors import KNeighborsClassifier

    from cropseg.models.forest import _RF_TRUSTED
    from cropseg.models.pixel import load_skops

    X, y, _ = _blobs(100)
    sio.dump(KNeighborsClassifier(3).fit(X, y), tmp_path / "knn.skops")
    with pytest.raises(ModelError, match="does not load"):
        load_skops(tmp_path / "knn.skops", _RF_TRUSTED)


# -- U-Net (skipped where torch is absent) ------------------------------------------------------------


def _scene(rows=64, cols=80, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((rows, cols), np.uint8)
    labels[8:40, 8:44] = 1
    labels[44:60, 50:76] = 1
    crop = np.array([0.04, 0.08, 0.05, 0.45], np.float32)[:, None, None]
    soil = np.array([0.10, 0.14, 0.18, 0.24], np.float32)[:, None, None]
    refl = np.where(labels[None] == 1, crop, soil) * rng.normal(1, 0.05, (4, rows, cols)).astype(np.float32)
    return refl.astype(np.float32), labels


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    refl, labels = _scene()
    spec = FEATURE_PRESETS["spectral"]
    cfg = Config().replace(train=TrainConfig(unet_steps=20, unet_batch=4, unet_patch=32, unet_block=16,
                                             unet_widths=(8, 8, 8), unet_lr=1e-2))
    trained, cv = fit_image_model(compute_features(refl, spec), labels, spec, cfg, reweight="rgd", rgd_clip=1.0)
    folder = save_model(trained, tmp_path_factory.mktemp("unet") / "model", extra={"cv": cv})
    return trained, cv, folder, refl, labels


def test_unet_trains_and_round_trips(unet):
    trained, cv, folder, refl, labels = unet
    assert cv["heldout_pixels"] > 0 and 0 <= cv["blocked"]["f1_weighted"] <= 1
    assert cv["reweight"]["method"] == "rgd"
    loaded = load_model(folder)
    assert isinstance(loaded.model, UNetModel) and loaded.threshold == trained.threshold
    valid = np.ones(labels.shape, bool)
    h = trained.halo
    padded = np.pad(refl, ((0, 0), (h, h), (h, h)))
    a = predict_window(trained, padded, valid, h)
    b = predict_window(loaded, padded, valid, h)
    np.testing.assert_array_equal(a, b)
    assert (a == labels).mean() > 0.8
    card = json.loads((folder / "model.json").read_text())
    assert card["weights"]["file"] == "model.safetensors" and "torch" in card["software"]


def test_unet_tiled_matches_whole(unet):
    trained, _, _, refl, labels = unet
    h = trained.halo
    padded = np.pad(refl, ((0, 0), (h, h), (h, h)))
    valid = np.ones(labels.shape, bool)
    whole = predict_proba_window(trained, padded, valid, h)
    tiled = predict_tiled(trained, padded, valid, h, (32, 16))
    # the same numbers up to float rounding (convolutions of other sizes sum in another order)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(tiled >= trained.threshold, whole >= trained.threshold)


@pytest.mark.parametrize("step", [2, 4])
def test_unet_refined_tiled_matches_whole(unet, step):
    trained, _, _, refl, labels = unet
    refined = dataclasses.replace(trained, refine=Refinement(radius=8, step=step))
    h = refined.halo
    assert h == trained.halo + {2: 18, 4: 20}[step]
    padded = np.pad(refl, ((0, 0), (h, h), (h, h)))
    valid = np.ones(labels.shape, bool)
    whole = predict_proba_window(refined, padded, valid, h)
    np.testing.assert_allclose(predict_tiled(refined, padded, valid, h, (32, 16)), whole, rtol=0, atol=1e-5)


def test_unet_halo_covers_its_receptive_field():
    torch = pytest.importorskip("torch")
    from cropseg.models.cnn import build_unet

    model = UNetModel(widths=(8, 8, 8))
    net = build_unet(6, model.widths).eval()
    reach = 0
    for phase in range(model.stride):  # an output pixel's inputs, at every phase of the stride
        x = torch.randn(1, 6, 256, 256, requires_grad=True)
        net(x)[0, 96 + phase, 96 + phase].backward()
        rows = torch.nonzero(x.grad.abs().sum((0, 1)))[:, 0]
        reach = max(reach, 96 + phase - int(rows.min()), int(rows.max()) - 96 - phase)
    assert 0 < reach <= model.halo and model.halo % model.stride == 0


def test_unet_pickles_for_process_pools(unet):
    import pickle

    trained, _, _, refl, labels = unet
    copy = pickle.loads(pickle.dumps(trained))
    h = trained.halo
    padded = np.pad(refl, ((0, 0), (h, h), (h, h)))
    valid = np.ones(labels.shape, bool)
    np.testing.assert_array_equal(predict_proba_window(copy, padded, valid, h),
                                  predict_proba_window(trained, padded, valid, h))


def test_unet_weights_are_checked(unet, tmp_path):
    import shutil

    _, _, folder, _, _ = unet
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(copy)
    shutil.copy(folder / "model.safetensors", copy / "model.safetensors")
    card = json.loads((copy / "model.json").read_text())
    card["params"]["widths"] = [16, 16, 16]
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not hold the U-Net"):
        load_model(copy)


def test_unet_classifies_windows_not_pixels(unet):
    trained = unet[0]
    assert isinstance(trained, TrainedModel) and trained.is_image_model
    with pytest.raises(ModelError, match="windows"):
        trained.predict_proba(np.zeros((3, 8), np.float32))
