"""Settings → "Reload UI" and Extensions → "Apply and restart UI" with a page open, in a WebUI started by
A1111's own webui.sh (which starts launch.py again after "Apply and restart UI" exits it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium
from real_webui import (
    Installation,
    WebUI,
    click_button,
    click_tab,
    copy_training_images,
    make_root,
    open_webui,
    running_webui,
    ti_job,
    visible,
    wait_until,
)

pytestmark = [pytest.mark.real_webui, pytest.mark.slow, pytest.mark.browser]

# a restart rebuilds the UI (Reload UI) or the whole process (Apply and restart UI): seconds on a free
# machine; the bound leaves room for a loaded CI runner
RESTART_TIMEOUT = 180


@dataclass
class Restartable:
    webui: WebUI
    data: Path
    browser: Browser


@pytest.fixture
def restartable(installation: Installation, tmp_path: Path) -> Iterator[Restartable]:
    require_chromium()
    root = make_root(tmp_path / "root")
    with (
        running_webui(root, installation.venv, launcher="webui.sh") as webui,
        Browser(tmp_path) as browser,
    ):
        open_webui(browser, webui)
        yield Restartable(webui, copy_training_images(tmp_path / "train64"), browser)


# a flag on the open page's window: a reloaded page no longer has it
OLD_PAGE_FLAG = "window.liandanPageBeforeRestart"


def _mark_the_open_page(browser: Browser) -> None:
    browser.evaluate(f"{OLD_PAGE_FLAG} = true")


def _wait_for_page_again(restartable: Restartable) -> None:
    """A1111's restart_reload() replaces the page by "Reloading..." and reloads it once the server answers
    its ping again: wait for a reloaded page (the old one's flag is gone), rebuilt with our tab in it. The
    "Reloading..." moment itself may already be over when the server is back, so it is not waited for."""
    browser = restartable.browser

    def reloaded_page_is_up() -> bool:
        new_page = browser.evaluate(f"typeof {OLD_PAGE_FLAG} === 'undefined'")
        return bool(new_page) and visible(browser, "#tab_txt2img")

    wait_until(reloaded_page_is_up, RESTART_TIMEOUT, "the page to be reloaded and come back")
    assert browser.exists("#tab_liandan")


def test_reload_ui_with_a_page_open_comes_back_and_keeps_the_jobs(restartable: Restartable) -> None:
    webui = restartable.webui
    before = webui.submit(ti_job("before_reload", restartable.data, steps=2))
    assert webui.wait_job(before)["state"] == "done"
    click_tab(restartable.browser, "#tabs", "Settings")
    _mark_the_open_page(restartable.browser)
    click_button(restartable.browser, "Reload UI")
    wait_until(lambda: "Restarting UI..." in webui.console(), 30, "the WebUI to start its restart")
    wait_until(
        lambda: webui.console().count("Startup time:") >= 2, RESTART_TIMEOUT, "the UI to be built again"
    )
    _wait_for_page_again(restartable)
    assert before in [job["id"] for job in webui.get("/liandan/v1/jobs")["jobs"]], "the job history was lost"
    webui.run_job(ti_job("after_reload", restartable.data, steps=2))


def test_apply_and_restart_ui_with_a_page_open_comes_back(restartable: Restartable) -> None:
    webui = restartable.webui
    browser = restartable.browser
    click_tab(browser, "#tabs", "Extensions")
    # the button's javascript reads the table of installed extensions, which the page fills in later
    table = "gradioApp().querySelectorAll('#extensions input[type=checkbox]').length > 0"
    wait_until(lambda: browser.evaluate(table), 60, "the table of installed extensions")
    _mark_the_open_page(browser)
    click_button(browser, "Apply and restart UI")
    wait_until(
        lambda: webui.console().count("Model loaded in") >= 2, RESTART_TIMEOUT, "the WebUI to start again"
    )
    _wait_for_page_again(restartable)
    webui.run_job(ti_job("after_restart", restartable.data, steps=2))
