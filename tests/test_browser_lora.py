"""The LoRA tab in headless Chromium: set a rank and a per-block rank, train a few steps, see the progress
bar and a preview image, and find the file in the Lora folder with those ranks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium, standalone_ui

from liandan.formats.lora import read_lora

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path):
    require_chromium()
    with standalone_ui(tmp_path) as url:
        yield url


def test_train_and_see_progress_a_preview_and_the_file(served: str, fixtures_dir: Path, tmp_path: Path):
    images = tmp_path / "train64"
    shutil.copytree(fixtures_dir / "train64", images)
    with Browser(tmp_path) as browser:
        browser.open(served)
        browser.click_text("LoRA")
        browser.fill("#liandan_lora_name textarea", "browserlora")
        browser.fill("#liandan_lora_data_folder textarea", str(images))
        browser.fill("#liandan_lora_network_block_ranks textarea", "middle_block=2")
        for field, value in [("data_width", 64), ("data_height", 64), ("train_max_steps", 3),
                             ("train_save_every", 0), ("train_preview_every", 1), ("preview_steps", 2),
                             ("preview_width", 64), ("preview_height", 64), ("preview_seed", 1),
                             ("network_rank", 4)]:  # fmt: skip
            browser.fill(f"#liandan_lora_{field} input[type=number]", str(value))
        browser.click("#liandan_lora_train")
        browser.wait_for_text("Started", timeout=30)
        browser.wait_for_text("done · step 3/3", timeout=180)
        browser.wait_for("#liandan_lora_status .liandan-progress-bar", timeout=10)
        browser.wait_for("#liandan_lora_previews img", timeout=60)
        browser.screenshot(tmp_path / "lora_tab.png")
    lora = read_lora(tmp_path / "data" / "models" / "Lora" / "browserlora.safetensors")
    assert lora.metadata["ss_steps"] == "3" and lora.metadata["ss_network_dim"] == "4"
    ranks = {t.shape[0] for k, t in lora.tensors.items() if k.endswith("lora_down.weight")}
    assert ranks == {2, 4}  # the middle block at its own rank
