"""The Hypernetwork tab in headless Chromium: Create hypernetwork, Train with previews and a loss curve,
Interrupt, Resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium, standalone_ui

from liandan.formats.hypernetwork import load_hypernetwork

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path):
    require_chromium()
    with standalone_ui(tmp_path) as url:  # an empty data dir: the host writes the tiny default models
        yield url, tmp_path / "data"


def _status(browser: Browser) -> str:
    script = """(() => {
        const app = document.querySelector('gradio-app');
        const root = app && app.shadowRoot ? app.shadowRoot : document;
        const el = root.querySelector('#liandan_hn_status');
        return el ? el.innerText : '';
    })()"""
    return browser.evaluate(script)


def _wait_status(browser: Browser, text: str, timeout: float) -> None:
    browser._wait(lambda: text in _status(browser), timeout, f"the status to show {text!r}")


def _count(browser: Browser, selector: str) -> int:
    return browser.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length")


def test_create_train_interrupt_resume_through_the_tab(served, tmp_path: Path, train64: Path) -> None:
    url, data = served
    dataset = train64
    with Browser(tmp_path) as browser:
        browser.open(url)
        browser.click_text("Hypernetwork")
        browser.fill("#liandan_hn_name textarea", "browserhn")
        browser.fill("#liandan_hn_layer_structure textarea", "1, 2, 1")
        browser.click("#liandan_hn_create")
        browser.wait_for_text("Created hypernetwork", timeout=120)
        assert (data / "models" / "hypernetworks" / "browserhn.pt").is_file()

        browser.fill("#liandan_hn_data_folder textarea", str(dataset))
        numbers = {"data_width": 64, "data_height": 64, "train_max_steps": 60, "train_save_every": 0,
                   "train_preview_every": 2, "preview_steps": 2, "preview_width": 64, "preview_height": 64,
                   "preview_seed": 5}  # fmt: skip
        for field, value in numbers.items():
            browser.fill(f"#liandan_hn_{field} input[type=number]", str(value))
        browser.fill("#liandan_hn_train_learn_rate textarea", "0.0001")
        browser.click("#liandan_hn_train")
        browser.wait_for_text("Started hypernetwork", timeout=30)
        # "running · step 0/60" shows while the model loads; a loss shows once a step has trained, and only
        # then does an interrupt leave a saved file and a self-test preview behind
        _wait_status(browser, "· loss ", timeout=180)
        browser.click("#liandan_hn_interrupt")
        _wait_status(browser, "interrupted", timeout=60)
        browser._wait(lambda: _count(browser, "#liandan_hn_previews img") > 0, 30, "a preview image")
        browser._wait(lambda: _count(browser, "#liandan_hn_loss canvas, #liandan_hn_loss svg") > 0, 30,
                      "the loss plot")  # fmt: skip
        interrupted_step = load_hypernetwork(data / "models" / "hypernetworks" / "browserhn.pt").step
        assert 0 < interrupted_step < 60

        browser.click("#liandan_hn_resume")
        _wait_status(browser, "done · step 60/60", timeout=300)
        browser.screenshot(tmp_path / "hypernetwork_tab.png")
    assert load_hypernetwork(data / "models" / "hypernetworks" / "browserhn.pt").step == 60
