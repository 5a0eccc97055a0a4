from __future__ import annotations

import pytest
from PIL import Image
from preprocess_models import make_blip_folder

from liandan.errors import CheckpointError
from liandan.preprocess.blip import BlipCaptioner, BlipOptions


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    return make_blip_folder(tmp_path_factory.mktemp("blip"))


def test_captions_respect_lengths_and_batching(blip_folder) -> None:
    captioner = BlipCaptioner(blip_folder, BlipOptions(model=str(blip_folder), min_length=4, max_length=7))
    images = [Image.new("RGB", (40, 30), "red"), Image.linear_gradient("L").convert("RGBA")]
    together = captioner.caption(images)
    assert together == [captioner.caption([im])[0] for im in images]
    for text in together:
        words = text.split()
        assert words and all(w.startswith("w") for w in words)
        assert len(words) <= 6  # max_length counts the [DEC] start token


def test_beam_search_runs(blip_folder) -> None:
    captioner = BlipCaptioner(blip_folder, BlipOptions(num_beams=3, min_length=2, max_length=5))
    assert isinstance(captioner.caption([Image.new("RGB", (8, 8))])[0], str)


def test_not_a_blip_folder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="BLIP"):
        BlipCaptioner(tmp_path, BlipOptions())


def test_offline_message_names_the_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"config\.json was not found .* folder .*BLIP"):
        BlipCaptioner.load(BlipOptions(), tmp_path)
