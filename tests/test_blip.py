from __future__ import annotations

import pytest
from PIL import Image
from preprocess_models import make_blip_folder

from liandan.errors import CheckpointError
from liandan.preprocess.blip import HUB_FILES, BlipCaptioner, BlipOptions


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


@pytest.mark.parametrize("beams", [1, 3])
def test_beam_setting_reaches_generate(blip_folder, monkeypatch, beams: int) -> None:
    captioner = BlipCaptioner(blip_folder, BlipOptions(num_beams=beams, min_length=2, max_length=5))
    seen: list[dict] = []
    generate = captioner.model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(captioner.model, "generate", spy)
    [text] = captioner.caption([Image.new("RGB", (8, 8))])
    assert text.split()
    assert [(c["num_beams"], c["min_length"], c["max_length"]) for c in seen] == [(beams, 2, 5)]


def test_not_a_blip_folder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="BLIP"):
        BlipCaptioner(tmp_path, BlipOptions())


def test_offline_message_lists_every_file_and_the_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    with pytest.raises(CheckpointError) as caught:
        BlipCaptioner.load(BlipOptions(), tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{len(HUB_FILES)} weight files are missing (downloads are off)")
    for name in HUB_FILES:
        assert str(tmp_path / "BLIP" / "blip-image-captioning-base" / name) in message
