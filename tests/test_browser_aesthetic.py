"""The Aesthetic tab in headless Chromium: create an aesthetic embedding from a folder of pictures."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium, standalone_ui

from liandan.formats.aesthetic import load_aesthetic

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_create_an_aesthetic_embedding_through_the_tab(tmp_path: Path) -> None:
    require_chromium()
    with standalone_ui(tmp_path) as url, Browser(tmp_path) as browser:
        browser.open(url)
        browser.click_text("Aesthetic embedding")
        browser.fill("#liandan_aesthetic_name textarea", "browser_look")
        browser.fill("#liandan_aesthetic_folder textarea", str(IMAGES))
        browser.click("#liandan_aesthetic_create")
        browser.wait_for_text("aesthetic embedding 'browser_look' from 4 images", timeout=180)
    folder = tmp_path / "data" / "models" / "aesthetic_embeddings"
    embedding = load_aesthetic(folder / "browser_look.safetensors")
    assert embedding.image_count == 4 and embedding.features["clip_l"].shape == (1, 32)
    assert (folder / "browser_look.pt").is_file()
