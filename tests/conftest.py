from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when it is absent (e.g. a user's fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (it ships beside the project in CI only)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The default model trained on cropseg.testing's tiny scene: (folder holding ``model/``, the scene's files)."""
    from cropseg.config import Config, TrainConfig
    from cropseg.testing import write_test_scene
    from cropseg.train import train_from_files

    tmp = tmp_path_factory.mktemp("tiny_model")
    files = write_test_scene(tmp / "scene")
    cfg = Config().replace(train=TrainConfig(cv_block=8, k_values=(3, 5)))
    train_from_files(files["image"], files["truth"], tmp / "model", config=cfg)
    return tmp, files
