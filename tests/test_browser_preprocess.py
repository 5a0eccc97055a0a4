"""The Preprocess & Caption tab in headless Chromium: resize + deepbooru captions on a small folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_driver import Browser, find_chromium, free_port
from PIL import Image
from preprocess_models import make_deepbooru_file

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def served(tmp_path: Path):
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    data = tmp_path / "data"
    make_deepbooru_file(data / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt", ["cat", "dog"])
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "LIANDAN_DATA_DIR": str(data),
        "PYTHONPATH": str(REPO),
    }
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
        yield url
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def test_resize_and_caption_through_the_tab(served: str, tmp_path: Path) -> None:
    source = tmp_path / "pictures"
    source.mkdir()
    Image.new("RGB", (90, 60), "red").save(source / "one.png")
    Image.new("RGB", (40, 70), "blue").save(source / "two (b).jpg")
    destination = tmp_path / "dataset"
    with Browser(tmp_path) as browser:
        browser.open(served)
        browser.click_text("Preprocess & Caption")
        browser.fill("#liandan_preprocess_source textarea", str(source))
        browser.fill("#liandan_preprocess_destination textarea", str(destination))
        browser.fill("#liandan_preprocess_width input[type=number]", "64")
        browser.fill("#liandan_preprocess_height input[type=number]", "64")
        browser.click("#liandan_preprocess_captioners input[type=checkbox]")  # the first: Deepbooru
        browser.click("#liandan_preprocess_start")
        browser.wait_for_text("2 processed", timeout=120)
    for stem in ("one", "two (b)"):
        with Image.open(destination / f"{stem}.png") as im:
            assert im.size == (64, 64)
        assert (destination / f"{stem}.txt").read_text(encoding="utf-8") == "cat"
