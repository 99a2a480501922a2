import json

import numpy as np
import pytest

from cropseg.config import Config, TrainConfig
from cropseg.errors import ModelError
from cropseg.models import load_model, read_card
from cropseg.testing import write_test_scene
from cropseg.train import block_groups, sample_pixels, train_from_files


def test_sample_pixels_is_stratified():
    labels = np.full((100, 100), 255, np.uint8)
    labels[:30] = 1
    labels[30:90] = 0
    idx = sample_pixels(labels, 900, seed=1)
    y = labels.ravel()[idx]
    assert idx.size == 900 and (np.diff(idx) > 0).all()
    assert y.mean() == pytest.approx(3000 / 9000, abs=0.01)
    assert (y != 255).all()
    assert sample_pixels(labels, 10**6).size == 9000


def test_block_groups():
    idx = np.array([0, 63, 64, 128 * 64, 128 * 64 + 64])
    assert block_groups(idx, 128, 64).tolist() == [0, 0, 1, 2, 3]


def _cfg(**kw):
    return Config().replace(train=TrainConfig(cv_block=8, **kw))


def test_train_picks_and_fits_cv_k(tmp_path):
    files = write_test_scene(tmp_path / "scene")
    result = train_from_files(files["image"], files["truth"], tmp_path / "model", config=_cfg(k_values=(1, 3, 5)))
    cv = result.report["cv"]
    best = max(cv["table"], key=lambda r: r["mean_f1_weighted"])
    assert cv["chosen"]["n_neighbors"] == best["k"]
    card = read_card(tmp_path / "model")
    # the k chosen by cross-validation is the k fitted (the reference notebook overwrote it with 15)
    assert card["params"]["n_neighbors"] == best["k"]
    assert load_model(tmp_path / "model").model.estimator.n_neighbors == best["k"]
    assert card["training"]["samples"] == card["training"]["labelled_pixels"] == 48 * 40
    assert 0 <= cv["blocked_cv_f1_weighted"] <= 1 and 0 <= cv["random_cv_f1_weighted"] <= 1


def test_tampered_or_foreign_models_are_refused(tmp_path):
    files = write_test_scene(tmp_path / "scene")
    model = tmp_path / "model"
    train_from_files(files["image"], files["truth"], model, config=_cfg(k_values=(3,)))
    weights = model / "model.skops"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(model)
    with pytest.raises(ModelError, match="not a cropseg model"):
        load_model(tmp_path / "scene")
    card = json.loads((model / "model.json").read_text())
    card["format"] = "other"
    (model / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a cropseg model card"):
        load_model(model)


def test_skops_allow_list_refuses_unexpected_types(tmp_path):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    from cropseg.models.pixel import _KNN_TRUSTED, load_skops

    rf = RandomForestClassifier(n_estimators=2).fit(np.random.rand(20, 2), np.arange(20) % 2)
    sio.dump(rf, tmp_path / "rf.skops")
    with pytest.raises(ModelError, match="does not load"):
        load_skops(tmp_path / "rf.skops", _KNN_TRUSTED)
