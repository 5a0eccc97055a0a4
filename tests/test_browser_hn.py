"""The Hypernetwork tab in headless Chromium: Create hypernetwork, Train with previews and a loss curve,
Interrupt, Resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_driver import Browser, find_chromium, free_port

from liandan.formats.hypernetwork import load_hypernetwork

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def served(tmp_path: Path):
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    data = tmp_path / "data"  # empty: the host writes the tiny default models on first use (SD1 is current)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "LIANDAN_DATA_DIR": str(data),
           "PYTHONPATH": str(REPO)}  # fmt: skip
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "liandan", "ui", "--port", str(port)], cwd=REPO, env=env,
                              stdout=log, stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}config", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the UI did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, data
    finally:
        server.terminate()
        server.wait(20)
        log.close()


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


def test_create_train_interrupt_resume_through_the_tab(served, tmp_path: Path, fixtures_dir: Path) -> None:
    url, data = served
    dataset = tmp_path / "train64"
    shutil.copytree(fixtures_dir / "train64", dataset)
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
        browser.click("#liandan_hn_start")
        browser.wait_for_text("Started hypernetwork", timeout=30)
        _wait_status(browser, "running · step", timeout=120)
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
