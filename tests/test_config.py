import pytest

from cropseg.config import Config, TrainConfig
from cropseg.errors import ConfigError


def test_defaults_and_round_trip(tmp_path):
    cfg = Config()
    assert cfg.train.k_values[0] == 3
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('version = 1\n[train]\nk_values = [5, 7]\n[polygonize]\nmin_area = 100\n')
    cfg = Config.from_toml(p)
    assert cfg.train.k_values == (5, 7)
    assert cfg.polygonize.min_area == 100.0
    assert cfg.replace(train=TrainConfig(seed=3)).train.seed == 3


@pytest.mark.parametrize(
    "data, match",
    [
        ({"trian": {}}, "unknown config key"),
        ({"train": {"kvalues": [3]}}, "train.kvalues"),
        ({"version": 2}, "version"),
        ({"train": {"seed": "x"}}, "must be int"),
    ],
)
def test_rejects_bad_config(data, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(data)
