from __future__ import annotations

from pathlib import Path

import pytest
from preprocess_models import make_deepbooru_file, make_wd14_folder

from liandan.errors import CheckpointError
from liandan.preprocess.captioners import build_captioners, pick_device, tag_format
from liandan.preprocess.job import PreprocessJob


def test_builds_in_the_job_order_with_the_job_options(tmp_path) -> None:
    make_deepbooru_file(tmp_path / "torch_deepdanbooru" / "model-resnet_custom_v3.pt", ["a", "b"])
    job = PreprocessJob(captioners=("wd14", "deepbooru"), wd14_model=str(make_wd14_folder(tmp_path / "wd")),
                        tag_threshold=0.75, tag_sort="score")  # fmt: skip
    captioners = build_captioners(job, tmp_path, "cpu")
    assert [c.name for c in captioners] == ["wd14", "deepbooru"]
    assert captioners[1].fmt == tag_format(job) and captioners[1].fmt.threshold == 0.75


def test_missing_weights_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=str(Path(tmp_path / "torch_deepdanbooru"))):
        build_captioners(PreprocessJob(captioners=("deepbooru",)), tmp_path, "cpu")
    with pytest.raises(CheckpointError, match="downloads are off"):
        build_captioners(PreprocessJob(captioners=("deepbooru",), allow_download=False), tmp_path, "cpu")


def test_pick_device() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cpu", "cuda")
