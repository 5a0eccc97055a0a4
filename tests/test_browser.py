"""The standalone UI in headless Chromium: it serves, every tab renders, tabs switch."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_driver import Browser, chromium_one_shot, require_chromium, standalone_ui

from liandan.ui.tabs import tab_list

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    """`python -m liandan ui` on a free port and a fresh data dir."""
    require_chromium()
    with standalone_ui(tmp_path_factory.mktemp("ui")) as url:
        yield url


def test_every_tab_renders(app_url: str, tmp_path: Path) -> None:
    dom = chromium_one_shot(app_url, tmp_path, "--dump-dom")
    for tab in tab_list():
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
        browser.wait_for("#liandan_apt_train")
        browser.click_text("Aesthetic embedding")
        browser.wait_for("#liandan_aesthetic_create")
        shot = browser.screenshot(tmp_path / "aesthetic.png")
        assert shot.stat().st_size > 10_000
