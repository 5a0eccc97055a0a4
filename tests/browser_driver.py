"""A small headless-Chromium driver over the DevTools protocol, for interactive UI tests.

Uses Debian's /usr/bin/chromium and the `websockets` package (already in the venv): no playwright, no
browser download. Selectors are CSS, looked up in the page and inside `gradio-app`'s shadow root if any.

    require_chromium()
    with standalone_ui(tmp_path) as url, Browser(tmp_path) as browser:
        browser.open(url)
        browser.click_text("Hypernetwork")
        browser.fill("#liandan_hn_name textarea", "my-hn")
        browser.click("#liandan_hn_train")
        browser.wait_for_text("step 1/")
        browser.screenshot(tmp_path / "hn.png")
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

# finds an element in the document or in gradio-app's shadow root
_QUERY = """(selector) => {
    const app = document.querySelector('gradio-app');
    const root = app && app.shadowRoot ? app.shadowRoot : document;
    return root.querySelector(selector) || document.querySelector(selector);
}"""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrowserError(AssertionError):
    pass


def require_chromium() -> str:
    """Chromium's path; a test that needs it is skipped where it is missing, and fails under CI."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


@contextmanager
def standalone_ui(work_dir: Path, startup_timeout: float = 120) -> Iterator[str]:
    """`python -m liandan ui` on a free port with its data in `work_dir/data` (an empty folder gets the tiny
    default models on first use) and its log in `work_dir/server.log`; yields the URL once it serves."""
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "LIANDAN_DATA_DIR": str(work_dir / "data"),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",  # the server trains on a shared CPU, as the tests do
    }
    log_path = work_dir / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "liandan", "ui", "--port", str(port)], cwd=REPO,
                                  env=env, stdout=log, stderr=log)  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + startup_timeout
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}config", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"the UI did not start:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(20)


class Browser:
    def __init__(
        self, work_dir: Path, chromium: str | None = None, size: tuple[int, int] = (1280, 1000)
    ) -> None:
        from websockets.sync.client import connect

        binary = chromium or find_chromium()
        if binary is None:
            raise BrowserError("chromium not found (apt-get install chromium)")
        port = free_port()
        self._log = (work_dir / "chromium.log").open("wb")
        self._process = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--remote-debugging-port={port}",
                f"--user-data-dir={work_dir / 'chromium-profile'}",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        page = self._first_page(port)
        self._socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _first_page(self, port: int, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    pages = [t for t in json.load(response) if t.get("type") == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited with {self._process.returncode}")
            time.sleep(0.2)
        raise BrowserError("chromium's DevTools endpoint did not come up")

    # --- protocol ----------------------------------------------------------------------------------

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """One DevTools command; events arriving meanwhile are dropped."""
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"javascript failed: {result['exceptionDetails'].get('text')} in {expression}")
        return result["result"].get("value")

    # --- what tests use ----------------------------------------------------------------------------

    def open(self, url: str, timeout: float = 60) -> None:
        self.send("Page.navigate", url=url)
        self._wait(lambda: self.evaluate("document.readyState") == "complete", timeout, f"{url} to load")

    def exists(self, selector: str) -> bool:
        return bool(self.evaluate(f"!!({_QUERY})({json.dumps(selector)})"))

    def wait_for(self, selector: str, timeout: float = 30) -> None:
        self._wait(lambda: self.exists(selector), timeout, f"an element {selector!r}")

    def click(self, selector: str, timeout: float = 30) -> None:
        self.wait_for(selector, timeout)
        self.evaluate(f"({_QUERY})({json.dumps(selector)}).click()")

    def click_text(self, text: str, tag: str = "button", timeout: float = 30) -> None:
        """Click the first `tag` whose visible text is `text` (Gradio tab buttons carry no elem_id)."""
        script = f"""(() => {{
            const app = document.querySelector('gradio-app');
            const root = app && app.shadowRoot ? app.shadowRoot : document;
            const hit = [...root.querySelectorAll({json.dumps(tag)})]
                .find(e => e.innerText.trim() === {json.dumps(text)});
            if (hit) hit.click();
            return !!hit;
        }})()"""
        self._wait(lambda: self.evaluate(script), timeout, f"a {tag} reading {text!r}")

    def fill(self, selector: str, text: str, timeout: float = 30) -> None:
        """Type into an input/textarea the way Gradio notices (an `input` event after setting the value)."""
        self.wait_for(selector, timeout)
        self.evaluate(
            f"""(() => {{
            const el = ({_QUERY})({json.dumps(selector)});
            el.value = {json.dumps(text)};
            el.dispatchEvent(new Event('input', {{bubbles: true}}));
            el.dispatchEvent(new Event('change', {{bubbles: true}}));
        }})()"""
        )

    def text(self) -> str:
        return self.evaluate(
            "(() => { const a = document.querySelector('gradio-app');"
            " return (a && a.shadowRoot ? a.shadowRoot.textContent : '') + document.body.innerText; })()"
        )

    def wait_for_text(self, text: str, timeout: float = 30) -> None:
        self._wait(lambda: text in self.text(), timeout, f"the text {text!r}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def _wait(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what}")

    def close(self) -> None:
        try:
            self._socket.close()
        finally:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chromium_one_shot(url: str, work_dir: Path, *args: str, timeout: float = 120) -> str:
    """Run chromium once (`--dump-dom`, `--screenshot=...`) with a fresh profile; returns stdout."""
    binary = find_chromium()
    if binary is None:
        raise BrowserError("chromium not found (apt-get install chromium)")
    profile = work_dir / f"profile-{os.getpid()}-{time.monotonic_ns()}"
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args, url],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work_dir,
    )
    if result.returncode != 0:
        raise BrowserError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout
