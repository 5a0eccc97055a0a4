"""The real WebUI's page in headless Chromium: every liandan tab and the WebUI's own tabs render, and the
textual-inversion, hypernetwork and preprocess jobs run from our tab."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_driver import Browser, require_chromium
from PIL import Image
from real_webui import Session, click_tab, open_liandan, open_webui, text_of, visible, wait_until

pytestmark = [pytest.mark.real_webui, pytest.mark.slow, pytest.mark.browser]

# (button text, the tab's content elem_id) of A1111 v1.10.1's own tabs
WEBUI_TABS = [
    ("txt2img", "tab_txt2img"),
    ("img2img", "tab_img2img"),
    ("Extras", "tab_extras"),
    ("PNG Info", "tab_pnginfo"),
    ("Checkpoint Merger", "tab_modelmerger"),
    ("Train", "tab_train"),
    ("Settings", "tab_settings"),
    ("Extensions", "tab_extensions"),
]


@pytest.fixture
def browser(session: Session, tmp_path: Path) -> Iterator[Browser]:
    require_chromium()
    with Browser(tmp_path) as browser:
        open_webui(browser, session.webui)
        yield browser


def test_every_tab_renders(browser: Browser) -> None:
    from liandan.ui.tabs import tab_list  # gradio: not in the newest-stack venv, which collects this file too

    for title, elem_id in WEBUI_TABS:
        click_tab(browser, "#tabs", title)
        wait_until(lambda: visible(browser, f"#{elem_id}"), 30, f"the WebUI's {title} tab")  # noqa: B023
    click_tab(browser, "#tabs", "Liandan")
    wait_until(lambda: visible(browser, "#tab_liandan"), 30, "the Liandan tab")
    for tab in tab_list():
        click_tab(browser, "#liandan_tabs", tab.title)
        wait_until(lambda: visible(browser, f"#liandan_tab_{tab.key}"), 30, tab.title)  # noqa: B023
        assert not browser.exists(f"#liandan_{tab.key}_failed"), text_of(browser, f"#liandan_tab_{tab.key}")


def _wait_status(browser: Browser, selector: str, text: str, timeout: float = 300) -> None:
    wait_until(lambda: text in text_of(browser, selector), timeout, f"{selector} to show {text!r}")


def _wait_latest_job(session: Session, kind: str) -> None:
    """The tab's status says done; the job queue it shares with REST says so too once all is written."""
    jobs = [job for job in session.webui.get("/liandan/v1/jobs")["jobs"] if job["kind"] == kind]
    assert jobs, f"no {kind} job was submitted"
    assert session.webui.wait_job(jobs[-1]["id"])["state"] == "done", jobs[-1]


def _fill_numbers(browser: Browser, prefix: str, numbers: dict[str, int]) -> None:
    for field, value in numbers.items():
        browser.fill(f"#{prefix}_{field} input[type=number]", str(value))


SMALL_RUN = {
    "data_width": 64,
    "data_height": 64,
    "train_max_steps": 3,
    "train_save_every": 0,
    "train_preview_every": 0,
    "preview_steps": 2,
    "preview_width": 64,
    "preview_height": 64,
}


def test_textual_inversion_from_the_tab(browser: Browser, session: Session) -> None:
    open_liandan(browser, "Textual Inversion")
    browser.fill("#liandan_ti_name textarea", "tab_ti")
    browser.fill("#liandan_ti_init_text textarea", "a photo")
    browser.click("#liandan_ti_create")
    browser.wait_for_text("Created", timeout=120)
    browser.fill("#liandan_ti_data_folder textarea", str(session.data))
    _fill_numbers(browser, "liandan_ti", SMALL_RUN)
    browser.click("#liandan_ti_train")
    _wait_status(browser, "#liandan_ti_status", "done · step 3/3")
    _wait_latest_job(session, "textual_inversion")
    assert session.webui.embeddings()["loaded"]["tab_ti"]["step"] == 3


def test_hypernetwork_from_the_tab(browser: Browser, session: Session) -> None:
    open_liandan(browser, "Hypernetwork")
    browser.fill("#liandan_hn_name textarea", "tab_hn")
    browser.click("#liandan_hn_create")
    browser.wait_for_text("Created hypernetwork", timeout=120)
    browser.fill("#liandan_hn_data_folder textarea", str(session.data))
    _fill_numbers(browser, "liandan_hn", SMALL_RUN)
    browser.click("#liandan_hn_train")
    _wait_status(browser, "#liandan_hn_status", "done · step 3/3")
    _wait_latest_job(session, "hypernetwork")
    assert "tab_hn" in [h["name"] for h in session.webui.get("/sdapi/v1/hypernetworks")]


def test_preprocess_from_the_tab(browser: Browser, session: Session, tmp_path: Path) -> None:
    destination = tmp_path / "dataset"
    open_liandan(browser, "Preprocess & Caption")
    browser.fill("#liandan_preprocess_source textarea", str(session.data))
    browser.fill("#liandan_preprocess_destination textarea", str(destination))
    browser.fill("#liandan_preprocess_width input[type=number]", "32")
    browser.fill("#liandan_preprocess_height input[type=number]", "32")
    browser.click("#liandan_preprocess_start")
    _wait_status(browser, "#liandan_preprocess_message", "Started", timeout=30)
    wait_until(lambda: len(list(destination.glob("*.png"))) == 4, 120, "four preprocessed images")
    for path in destination.glob("*.png"):
        with Image.open(path) as image:
            assert image.size == (32, 32)


def test_each_tab_keeps_its_own_saved_defaults(session: Session) -> None:
    """A1111 saves every control's default in ui-config.json keyed by tab and label: our tabs' same-labelled
    controls (the prompt template) get keys of their own, so the hypernetwork tab keeps its template."""
    import json

    saved = json.loads((session.webui.root / "ui-config.json").read_text(encoding="utf-8"))
    templates = {key: value for key, value in saved.items() if key.endswith("/Prompt template/value")}
    assert len(templates) >= 3, templates  # TI, hypernetwork, APT
    by_tab = {key.split("/")[1]: value for key, value in templates.items() if key.startswith("customscript/")}
    assert by_tab["liandan_hn"] == "liandan_hypernetwork.txt", templates
    assert by_tab["liandan_ti"] == "liandan_style_filewords.txt", templates
