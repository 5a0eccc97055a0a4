from __future__ import annotations

import pytest
from preprocess_models import make_deepbooru_file, make_wd14_folder

from liandan.errors import CheckpointError
from liandan.preprocess.blip import HUB_FILES
from liandan.preprocess.captioners import build_captioners, pick_device, tag_format
from liandan.preprocess.job import PreprocessJob


def test_builds_in_the_job_order_with_the_job_options(tmp_path) -> None:
    make_deepbooru_file(tmp_path / "torch_deepdanbooru" / "model-resnet_custom_v3.pt", ["a", "b"])
    job = PreprocessJob(captioners=("wd14", "deepbooru"), wd14_model=str(make_wd14_folder(tmp_path / "wd")),
                        tag_threshold=0.75, tag_sort="score")  # fmt: skip
    captioners = build_captioners(job, tmp_path, "cpu")
    assert [c.name for c in captioners] == ["wd14", "deepbooru"]
    assert captioners[1].fmt == tag_format(job) and captioners[1].fmt.threshold == 0.75


def test_missing_weights_of_every_captioner_in_one_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    job = PreprocessJob(captioners=("deepbooru", "blip", "wd14"))
    with pytest.raises(CheckpointError) as caught:
        build_captioners(job, tmp_path, "cpu")
    message = str(caught.value)
    assert message.startswith(f"{1 + len(HUB_FILES) + 2} weight files are missing (downloads are off)")
    assert str(tmp_path / "torch_deepdanbooru" / "model-resnet_custom_v3.pt") in message
    assert str(tmp_path / "BLIP" / "blip-image-captioning-base" / "model.safetensors") in message
    assert str(tmp_path / "wd14_tagger" / job.wd14_model.split("/")[1] / "selected_tags.csv") in message

    monkeypatch.delenv("LIANDAN_OFFLINE")
    with pytest.raises(CheckpointError, match="a weight file is missing \\(downloads are off\\)"):
        build_captioners(PreprocessJob(captioners=("deepbooru",), allow_download=False), tmp_path, "cpu")


@pytest.mark.parametrize("cuda", [True, False])
def test_pick_device(monkeypatch, cuda: bool) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert pick_device("auto") == ("cuda" if cuda else "cpu")
    assert pick_device("cpu") == "cpu"
