import json

import numpy as np
import pytest

from cropseg.config import Config, TrainConfig
from cropseg.errors import ConfigError, ModelError
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
    result = train_from_files(
        files["image"], files["truth"], tmp_path / "model", kind="knn", config=_cfg(k_values=(1, 3, 5))
    )
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
    train_from_files(files["image"], files["truth"], model, kind="knn", config=_cfg(k_values=(3,)))
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


def test_train_lgbm_with_features_rgd_and_a_full_card(tmp_path):
    from cropseg.features import FEATURE_PRESETS
    from cropseg.manifest import file_digest
    from cropseg.predict import predict_from_files
    from cropseg.raster_io import read
    from cropseg.testing import expected_labels, make_grid

    files = write_test_scene(tmp_path / "scene")
    cfg = Config().replace(train=TrainConfig(cv_block=8, lgbm_rounds=30, threshold="f1_weighted"))
    result = train_from_files(
        files["image"], files["truth"], tmp_path / "m", kind="lgbm", features="context", reweight="rgd",
        rgd_clip=2.0, config=cfg,
    )
    card = read_card(tmp_path / "m")
    assert card["model"] == "lgbm" and card["features"]["names"] == FEATURE_PRESETS["context"].names
    cv = card["cv"]
    assert cv["threshold_rule"] == "f1_weighted" and card["threshold"] == cv["threshold"]
    assert cv["reweight"] == {"method": "rgd", "clip": 2.0}
    for split in ("blocked", "random"):
        assert {"f1_crop", "f1_noncrop", "f1_weighted"} <= set(cv[split])
    assert card["weights"]["file"] == "model.lgb.txt"
    assert card["weights"]["sha256"] == file_digest(tmp_path / "m" / "model.lgb.txt")
    assert "lightgbm" in card["software"] and card["training"]["samples"] == 48 * 40
    assert result.trained.features.halo == 15
    pred = read(predict_from_files(tmp_path / "m", files["image"], tmp_path / "p.tif"))[0]
    assert (pred == expected_labels(make_grid())).mean() > 0.9


def test_cli_train_model_options(tmp_path):
    from typer.testing import CliRunner

    from cropseg.cli import app

    files = write_test_scene(tmp_path / "scene")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[train]\ncv_block = 8\nlgbm_rounds = 20\n")
    args = ["train", "--image", files["image"], "--labels", files["truth"], "--out", tmp_path / "m",
            "--model", "lgbm", "--reweight", "rgd", "--rgd-clip", "0.5", "--features", "spectral", "--config", cfg]
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "Threshold" in out and "random-split CV F1" in out and "ndvi" in out
    assert read_card(tmp_path / "m")["params"]["rgd_clip"] == 0.5
    res = CliRunner().invoke(app, [str(a) for a in [*args[:7], "--model", "knn", "--reweight", "rgd"]])
    assert res.exit_code == 1 and "gradient-trained" in " ".join(res.output.split())


def test_feature_overrides_from_the_config_replace_only_what_they_name():
    from cropseg.config import FeaturesConfig
    from cropseg.features import PLANETSCOPE_BANDS, feature_preset
    from cropseg.train import resolve_features

    preset = feature_preset("texture")
    assert resolve_features("lgbm", PLANETSCOPE_BANDS) == preset
    spec = resolve_features("lgbm", PLANETSCOPE_BANDS, FeaturesConfig(texture=(4.0,), texture_windows=(31,)))
    assert spec.texture == (4.0,) and spec.texture_windows == (31,)
    assert (spec.indices, spec.context, spec.scales) == (preset.indices, preset.context, preset.scales)
    assert spec.names[-2:] == ["rows4_energy31", "rows4_anisotropy31"]
    assert spec.texture_stride == preset.texture_stride == 4
    assert resolve_features("lgbm", PLANETSCOPE_BANDS, FeaturesConfig(texture_stride=1)).texture_stride == 1
    with pytest.raises(ConfigError, match="context features and scales"):  # the knn preset has no context
        resolve_features("knn", PLANETSCOPE_BANDS, FeaturesConfig(scales=(5,)))
