"""The Preprocess & Caption tab in headless Chromium: resize + deepbooru captions on a small folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium, standalone_ui
from PIL import Image
from preprocess_models import make_deepbooru_file

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path):
    require_chromium()
    data = tmp_path / "data"
    make_deepbooru_file(data / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt", ["cat", "dog"])
    with standalone_ui(tmp_path) as url:
        yield url


def test_resize_and_caption_through_the_tab(served: str, tmp_path: Path) -> None:
    source = tmp_path / "pictures"
    source.mkdir()
    Image.new("RGB", (90, 60), "red").save(source / "one.png")
    Image.new("RGB", (40, 70), "blue").save(source / "two (b).jpg")
    destination = tmp_path / "dataset"
    with Browser(tmp_path) as browser:
        browser.open(served)
        browser.click_text("Preprocess & Caption")
        browser.fill("#liandan_preprocess_source textarea", str(source))
        browser.fill("#liandan_preprocess_destination textarea", str(destination))
        browser.fill("#liandan_preprocess_width input[type=number]", "64")
        browser.fill("#liandan_preprocess_height input[type=number]", "64")
        browser.click("#liandan_preprocess_captioners input[type=checkbox]")  # the first: Deepbooru
        browser.click("#liandan_preprocess_start")
        browser.wait_for_text("2 processed", timeout=120)
    for stem in ("one", "two (b)"):
        with Image.open(destination / f"{stem}.png") as im:
            assert im.size == (64, 64)
        assert (destination / f"{stem}.txt").read_text(encoding="utf-8") == "cat"
