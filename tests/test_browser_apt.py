"""The APT tab in headless Chromium: create a pair, train a few steps with a CFG range, see the progress bar
and a preview image, and find both files saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium, standalone_ui

from liandan.formats.embedding import load_embedding

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path):
    require_chromium()
    with standalone_ui(tmp_path) as url:
        yield url


def test_create_train_and_see_progress_and_a_preview(served: str, train64: Path, tmp_path: Path) -> None:
    images = train64
    with Browser(tmp_path) as browser:
        browser.open(served)
        browser.click_text("APT")
        browser.fill("#liandan_apt_name textarea", "browserapt")
        browser.fill("#liandan_apt_init_text textarea", "a photo")
        browser.click("#liandan_apt_create")
        browser.wait_for_text("Created", timeout=120)
        browser.fill("#liandan_apt_data_folder textarea", str(images))
        browser.fill("#liandan_apt_cfg_scale textarea", "3-5:cos")
        for field, value in [("data_width", 64), ("data_height", 64), ("train_max_steps", 3),
                             ("train_save_every", 0), ("train_preview_every", 1), ("preview_steps", 2),
                             ("preview_width", 64), ("preview_height", 64), ("preview_seed", 1)]:  # fmt: skip
            browser.fill(f"#liandan_apt_{field} input[type=number]", str(value))
        browser.click("#liandan_apt_train")
        browser.wait_for_text("Started", timeout=30)
        browser.wait_for_text("done · step 3/3", timeout=180)
        browser.wait_for("#liandan_apt_status .liandan-progress-bar", timeout=10)
        browser.wait_for("#liandan_apt_previews img", timeout=60)
        browser.screenshot(tmp_path / "apt_tab.png")
    folder = tmp_path / "data" / "embeddings"
    assert load_embedding(folder / "browserapt.pt").step == 3
    assert load_embedding(folder / "browserapt-neg.pt").step == 3
