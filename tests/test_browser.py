"""The standalone UI in headless Chromium: it serves, every tab renders, tabs switch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_driver import Browser, chromium_one_shot, find_chromium, free_port

from liandan.ui.tabs import TABS

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory, chromium: str):
    """`python -m liandan ui` on a free port and a fresh data dir."""
    work = tmp_path_factory.mktemp("ui")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "LIANDAN_DATA_DIR": str(work / "data")}
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "liandan", "ui", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}config", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the UI did not start:\n{(work / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def test_every_tab_renders(app_url: str, tmp_path: Path) -> None:
    dom = chromium_one_shot(app_url, tmp_path, "--dump-dom")
    for tab in TABS:
        assert tab.title.replace("&", "&amp;") in dom, f"tab {tab.title!r} missing"
    assert 'id="liandan_tabs"' in dom
    assert 'id="liandan_tab_textual_inversion"' in dom


def test_one_shot_screenshot(app_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "ui.png"
    chromium_one_shot(app_url, tmp_path, f"--screenshot={shot}", "--window-size=1280,900")
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_tabs_switch_in_a_driven_browser(app_url: str, tmp_path: Path) -> None:
    with Browser(tmp_path) as browser:
        browser.open(app_url)
        browser.wait_for("#liandan_tabs")
        browser.click_text("APT")
        browser.wait_for("#liandan_apt_notice")
        browser.wait_for_text("is not in this release")
        browser.click_text("Aesthetic")
        browser.wait_for("#liandan_aesthetic_notice")
        shot = browser.screenshot(tmp_path / "aesthetic.png")
        assert shot.stat().st_size > 10_000
