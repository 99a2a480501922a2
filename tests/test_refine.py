import dataclasses

import numpy as np
import pytest

from cropseg.config import Config, PredictConfig
from cropseg.errors import ConfigError
from cropseg.features import FEATURE_PRESETS, FeatureSpec, compute_features, to_samples
from cropseg.models import KNNModel, LGBMModel, TrainedModel, UNetModel
from cropseg.predict import predict_proba_window, with_refinement
from cropseg.refine import Refinement, guided_filter, upsample
from cropseg.testing import predict_tiled


def _two_fields(seed=0, shape=(48, 60)):
    """A guide with a left field (dark red, bright NIR) and a right one, and noisy probabilities of each."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    left = np.zeros(shape, bool)
    left[:, : cols // 2] = True
    guide = np.empty((2, rows, cols), np.float32)
    guide[0] = np.where(left, 0.05, 0.15) + rng.normal(0, 0.002, shape)
    guide[1] = np.where(left, 0.40, 0.22) + rng.normal(0, 0.002, shape)
    proba = np.clip(np.where(left, 0.7, 0.3) + rng.normal(0, 0.25, shape), 0, 1).astype(np.float32)
    return guide, proba, left


@pytest.mark.parametrize(("radius", "step"), [(4, 1), (8, 2), (8, 4)])  # the exact filter, fast ones (4: default)
def test_refinement_removes_speckle_and_keeps_field_edges(radius, step):
    guide, proba, left = _two_fields()
    data = np.ones(left.shape, bool)
    refined = guided_filter(guide, proba[::step, ::step], data, Refinement(radius=radius, eps=1e-5, step=step))
    before = np.mean((proba >= 0.5) != left)
    after = np.mean((refined >= 0.5) != left)
    assert before > 0.1 and after < 0.02
    # the columns on either side of the border keep their own field's class
    border = left.shape[1] // 2
    assert (refined[:, border - 1] >= 0.5).mean() > 0.9 and (refined[:, border] < 0.5).mean() > 0.9
    assert refined.dtype == np.float32 and refined.min() >= 0 and refined.max() <= 1


@pytest.mark.parametrize("step", [1, 2, 3])
def test_nodata_does_not_pull_probabilities_down(step):
    guide, _, left = _two_fields()
    proba = np.full(left.shape, 0.9, np.float32)
    data = np.ones(left.shape, bool)
    data[:, :11] = False
    proba[~data] = np.nan  # what the model gives there
    refined = guided_filter(guide, proba[::step, ::step], data, Refinement(radius=4, eps=1e-5, step=step))
    np.testing.assert_allclose(refined[data], 0.9, atol=1e-3)


def test_upsample_interpolates_between_lattice_pixels():
    rng = np.random.default_rng(0)
    low = rng.random((6, 7)).astype(np.float32)
    full = upsample(low, (11, 13), 2)
    assert full.shape == (11, 13) and full.dtype == np.float32
    np.testing.assert_array_equal(full[::2, ::2], low)  # the lattice keeps its values
    np.testing.assert_allclose(full[1::2, ::2], (low[:-1] + low[1:]) / 2, rtol=1e-6)
    np.testing.assert_allclose(full[::2, 1::2], (low[:, :-1] + low[:, 1:]) / 2, rtol=1e-6)
    # a linear ramp stays linear, and beyond the last lattice pixel its value is kept
    ramp = upsample(np.tile(np.arange(5, dtype=np.float32) * 3, (2, 1)), (4, 14), 3)
    np.testing.assert_allclose(ramp[0], [*range(13), 12], rtol=1e-6)
    # a window starting on the lattice gets the same numbers as the whole array
    np.testing.assert_array_equal(upsample(low[2:, 3:], (7, 7), 2), full[4:, 6:])


def test_fast_filter_is_close_to_the_exact_one():
    guide, proba, left = _two_fields(seed=1, shape=(64, 80))
    data = np.ones(left.shape, bool)
    exact = guided_filter(guide, proba, data, Refinement(radius=8, step=1))
    fast = guided_filter(guide, proba[::2, ::2], data, Refinement(radius=8, step=2))
    assert np.mean((exact >= 0.5) != (fast >= 0.5)) < 0.01
    assert np.abs(exact - fast).mean() < 0.02


def test_refinement_settings_are_checked():
    assert Refinement(radius=5, step=1).halo == 10
    assert Refinement(radius=8, step=2).halo == 18  # 2 * 4 lattice px of fits and their means, 2 px interpolation
    assert Refinement(radius=8).halo == 20  # step 4: 2 * 2 lattice px of 4 px, 4 px interpolation
    assert Refinement(radius=8, step=4).halo == Refinement(radius=8, step=4).step * 5
    with pytest.raises(ConfigError, match="radius"):
        Refinement(radius=0)
    with pytest.raises(ConfigError, match="eps"):
        Refinement(eps=0.0)
    with pytest.raises(ConfigError, match="step"):
        Refinement(radius=4, step=5)
    with pytest.raises(ConfigError, match="step"):
        Refinement(step=0)
    with pytest.raises(ValueError, match="guide"):
        guided_filter(np.zeros((4, 5, 5)), np.zeros((5, 5)), np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="lattice of step 4"):
        guided_filter(np.zeros((2, 5, 5)), np.zeros((5, 5)), np.ones((5, 5), bool))
    with pytest.raises(ConfigError, match="refine"):
        PredictConfig(refine="maybe")
    with pytest.raises(ConfigError, match="refine_step"):
        PredictConfig(refine_step=0)
    assert Config.from_dict({"predict": {"refine": "off"}}).predict.refine == "off"


@pytest.fixture(scope="module")
def lgbm_on_fields():
    """A small LightGBM on context features of a generated two-class scene."""
    rng = np.random.default_rng(3)
    rows, cols = 64, 80
    crop = np.zeros((rows, cols), bool)
    crop[:, :40] = True
    crop[20:40, 50:70] = True
    refl = np.empty((4, rows, cols), np.float32)
    refl[0] = 0.06
    refl[1] = 0.08
    refl[2] = np.where(crop, 0.05, 0.14) + rng.normal(0, 0.03, (rows, cols))
    refl[3] = np.where(crop, 0.38, 0.24) + rng.normal(0, 0.05, (rows, cols))
    spec = FEATURE_PRESETS["spectral"]
    X = to_samples(compute_features(refl, spec))
    y = crop.ravel().astype(np.uint8)
    model = LGBMModel(grid=({"num_leaves": 7},), cv_folds=2, max_rounds=20, seed=0)
    model.fit(X, y, (np.arange(y.size) // 640) % 4)
    return TrainedModel(model=model, features=spec), refl, crop


@pytest.mark.parametrize(("step", "extra"), [(1, 6), (2, 10)])
def test_refined_tiles_equal_the_whole_image(lgbm_on_fields, step, extra):
    raw, refl, crop = lgbm_on_fields
    trained = dataclasses.replace(raw, refine=Refinement(radius=3, eps=3e-5, step=step))
    h = trained.halo
    assert h == raw.halo + extra and trained.stride == step
    padded = np.pad(refl, ((0, 0), (h, h), (h, h)))
    valid = np.ones(crop.shape, bool)
    valid[5:9, 30:50] = False  # cloud: no output there, but the filter still sees the image
    whole = predict_proba_window(trained, padded, valid, h)
    assert np.isnan(whole[~valid]).all()
    np.testing.assert_allclose(predict_tiled(trained, padded, valid, h, (16, 24)), whole, rtol=0, atol=1e-5)
    # and the refinement helps on this noisy scene
    raw_proba = predict_proba_window(raw, padded, valid, h)
    assert np.mean((whole >= 0.5) != crop)[()] <= np.mean((raw_proba >= 0.5) != crop)


def test_with_refinement_follows_the_config(lgbm_on_fields):
    trained, _, _ = lgbm_on_fields
    auto = with_refinement(trained, PredictConfig())
    assert auto.refine == Refinement(radius=8, eps=3e-5)
    assert with_refinement(trained, PredictConfig(refine="off")).refine is None
    knn = TrainedModel(model=KNNModel(), features=trained.features)
    assert with_refinement(knn, PredictConfig()).refine is None  # the reference's method stays as it was
    unet = TrainedModel(model=UNetModel(), features=trained.features)
    assert with_refinement(unet, PredictConfig()).refine is None
    assert with_refinement(knn, PredictConfig(refine="on", refine_radius=4)).refine == Refinement(4, 3e-5)
    no_red = TrainedModel(model=trained.model, features=FeatureSpec(bands=("a", "b", "c", "d")))
    with pytest.raises(ConfigError, match="red and NIR"):
        with_refinement(no_red, PredictConfig(refine="on"))
