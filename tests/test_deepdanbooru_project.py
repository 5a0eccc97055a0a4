from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from liandan.errors import ConfigError
from liandan.preprocess import deepdanbooru_project
from liandan.preprocess.deepdanbooru_project import DeepDanbooruProjectCaptioner, fit_and_pad
from liandan.preprocess.tag_format import TagFormat


def test_not_a_project_or_extra_missing(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"project\.json"):
        DeepDanbooruProjectCaptioner(tmp_path, TagFormat())
    (tmp_path / "project.json").write_text("{}")
    monkeypatch.setattr(deepdanbooru_project, "extra_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install deepdanbooru tensorflow"):
        DeepDanbooruProjectCaptioner(tmp_path, TagFormat())


def test_fit_and_pad_keeps_aspect() -> None:
    array = fit_and_pad(Image.new("RGB", (100, 50), "white"), 32, 32)
    assert array.shape == (32, 32, 3) and array.max() == 1.0
    assert array[0, 16].sum() == 0 and array[16, 16].sum() == 3.0  # padded band above, picture in the middle


def test_uses_the_deepdanbooru_project_api(tmp_path, monkeypatch) -> None:
    """With the package present, the project's model and tags are loaded through its own functions."""
    (tmp_path / "project.json").write_text("{}")
    seen = {}

    class KerasLikeModel:
        input_shape = (None, 24, 24, 3)

        def predict(self, batch, verbose=0):
            seen["batch"] = batch.shape
            return np.tile([0.9, 0.2, 0.8], (len(batch), 1))

    project = types.SimpleNamespace(
        load_model_from_project=lambda path, compile_model: KerasLikeModel(),
        load_tags_from_project=lambda path: ["smile", "hat", "rating:safe"],
    )
    monkeypatch.setitem(sys.modules, "deepdanbooru", types.SimpleNamespace(project=project))
    monkeypatch.setattr(deepdanbooru_project, "extra_available", lambda: True)
    captioner = DeepDanbooruProjectCaptioner(tmp_path, TagFormat())
    assert captioner.caption([Image.new("RGB", (5, 9))] * 2) == ["smile", "smile"]
    assert seen["batch"] == (2, 24, 24, 3)
