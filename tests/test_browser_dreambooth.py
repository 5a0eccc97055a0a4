"""The DreamBooth tab in headless Chromium: import a concepts_list file into the table, train a few steps on
the tiny model with prior preservation, and find the new checkpoint in the model list."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium, standalone_ui

pytestmark = [pytest.mark.browser, pytest.mark.slow]
EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"

STATUS = """(() => {
    const app = document.querySelector('gradio-app');
    const root = app && app.shadowRoot ? app.shadowRoot : document;
    const el = root.querySelector('#liandan_db_status');
    return el ? el.innerText : '';
})()"""
OPEN_MODELS = """(() => {
    const input = document.querySelector('#liandan_db_model input');
    input.focus();
    input.dispatchEvent(new MouseEvent('mousedown', {bubbles: true}));
    input.dispatchEvent(new FocusEvent('focus'));
    return true;
})()"""
MODEL_OPTIONS = "[...document.querySelectorAll('#liandan_db_model ul li')].map(li => li.innerText.trim())"


def test_import_concepts_train_and_find_the_checkpoint_listed(tmp_path: Path) -> None:
    require_chromium()
    shutil.copytree(EXAMPLE_IMAGES, tmp_path / "me")
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([{"instance_data_dir": "me", "instance_prompt": "sks shape, [filewords]",
                                     "class_data_dir": "shapes", "class_prompt": "a shape",
                                     "num_class_images": 1, "class_infer_steps": 1}]))  # fmt: skip
    with standalone_ui(tmp_path) as url, Browser(tmp_path) as browser:
        browser.open(url)
        browser.click_text("DreamBooth")
        browser.fill("#liandan_db_concepts_file textarea", str(concepts))
        browser.click("#liandan_db_import")
        browser.wait_for_text("Imported 1 concept(s)", timeout=60)
        browser.fill("#liandan_db_name textarea", "browserdb")
        numbers = {"data_width": 64, "data_height": 64, "train_max_steps": 3, "train_save_every": 0,
                   "train_preview_every": 0, "preview_steps": 1, "preview_width": 64, "preview_height": 64,
                   "preview_seed": 1}  # fmt: skip
        for field, value in numbers.items():
            browser.fill(f"#liandan_db_{field} input[type=number]", str(value))
        browser.click("#liandan_db_train")
        browser.wait_for_text("Started dreambooth", timeout=30)
        browser._wait(lambda: "done · step 3/3" in browser.evaluate(STATUS), 300, "the job to finish")
        browser.click("#liandan_db_refresh")

        def listed() -> bool:  # the options render a moment after the list opens
            browser.evaluate(OPEN_MODELS)
            time.sleep(1)
            return "browserdb.safetensors" in browser.evaluate(MODEL_OPTIONS)

        browser._wait(listed, 30, "the checkpoint in the model list")
        browser.screenshot(tmp_path / "dreambooth_tab.png")
    assert (tmp_path / "data" / "models" / "Stable-diffusion" / "browserdb.safetensors").is_file()
    assert len(list((tmp_path / "shapes").glob("*.png"))) == 1
