"""Harness for the tests inside the real, unmodified AUTOMATIC1111 WebUI v1.10.1 (marker `real_webui`).

The WebUI runs in its own venv, built by `bash .ci/setup-env --webui-real` (A1111's pinned packages and
nothing of ours) and named by $LIANDAN_WEBUI_VENV; without that variable these tests are skipped. The
tests themselves run in the main venv and drive the WebUI over HTTP and headless Chromium.

Each WebUI is a fresh copy of ../shared/a1111-webui-1.10.1 (or $LIANDAN_WEBUI) with a copy of this checkout
as extensions/liandan and the fixtures' tiny SD1 model, started with safe-unpickle on and --api on a free
port; its console goes to a file. The session fixtures:

- `installation`: removes our additions from the venv, boots the stock WebUI once without liandan (the
  baseline console), then boots it with liandan and without --skip-prepare-environment, so the WebUI runs
  install.py as it does for users and install.py installs what we add;
- `webui`: the second start of that same tree (install.py runs again), shared by most tests.

Tests that need other flags or models start their own with `running_webui`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from browser_driver import Browser, free_port

REPO = Path(__file__).resolve().parents[1]
VENV_VARIABLE = "LIANDAN_WEBUI_VENV"
SOURCE = Path(os.environ.get("LIANDAN_WEBUI", REPO.parent / "shared" / "a1111-webui-1.10.1"))
FIXTURES = Path(os.environ.get("LIANDAN_FIXTURES", REPO.parent / "shared" / "fixtures" / "webui-1.10.1"))
# the boot notes' flags; safe-unpickle stays on
FLAGS = (
    "--skip-torch-cuda-test",
    "--use-cpu",
    "all",
    "--no-half",
    "--precision",
    "full",
    "--api",
    "--no-download-sd-model",
    "--skip-version-check",
)
# repositories/ folder -> the variable A1111 reads its pinned commit from (launch_utils.prepare_environment)
REPOSITORIES = {
    "stable-diffusion-webui-assets": "ASSETS_COMMIT_HASH",
    "stable-diffusion-stability-ai": "STABLE_DIFFUSION_COMMIT_HASH",
    "generative-models": "STABLE_DIFFUSION_XL_COMMIT_HASH",
    "k-diffusion": "K_DIFFUSION_COMMIT_HASH",
    "BLIP": "BLIP_COMMIT_HASH",
}
CACHES = {"__pycache__", ".pytest_cache", ".ruff_cache"}
FINISHED = ("done", "interrupted", "error")
Launcher = Literal["launch.py", "webui.sh"]
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- the venv ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def requirements(self) -> Path:
        """A1111's requirements file as setup-env adjusted it: the WebUI's REQS_FILE."""
        return self.path / "webui-requirements.txt"

    def pip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.python), "-m", "pip", "--disable-pip-version-check", *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def versions(self) -> dict[str, str]:
        """Installed distribution -> version, names lower-cased with '-' (as pip normalises them)."""
        listed = json.loads(self.pip("list", "--format=json").stdout)
        return {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in listed}


def webui_venv() -> Venv:
    value = os.environ.get(VENV_VARIABLE)
    if not value:
        pytest.skip(f"the real-WebUI tests need ${VENV_VARIABLE} (bash .ci/setup-env --webui-real)")
    venv = Venv(Path(value).resolve())
    if not venv.python.is_file() or not venv.requirements.is_file():
        pytest.fail(f"${VENV_VARIABLE}={value} is not a venv built by .ci/setup-env --webui-real")
    if not (SOURCE / "launch.py").is_file():
        pytest.fail(f"no A1111 WebUI source at {SOURCE} (set LIANDAN_WEBUI)")
    return venv


def our_additions() -> list[str]:
    """The distributions install.py adds here (requirements.txt's lines that apply to this platform)."""
    import install  # the checkout's root is on sys.path in the test venv

    return [addition.name for addition in install.read_requirements()]


# --- a WebUI tree ---------------------------------------------------------------------------------------


def _not_in_extension(folder: str, names: list[str]) -> set[str]:
    """What a user's clone of the extension would not hold: caches, our venvs, local data, the private
    packages an install.py run in the checkout may have left."""
    top = Path(folder) == REPO
    local = {".git", "data", "liandan-data", ".packages"}
    return {n for n in names if n in CACHES or (top and (n.startswith(".venv") or n in local))}


def make_root(dest: Path, *, with_liandan: bool = True) -> Path:
    """A writable copy of the WebUI with the tiny SD1 model (and this checkout as extensions/liandan)."""
    shutil.copytree(SOURCE, dest, symlinks=True)
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    models = dest / "models" / "Stable-diffusion"
    for suffix in (".safetensors", ".yaml"):
        shutil.copy(FIXTURES / "model" / f"tiny-sd1{suffix}", models)
    shutil.copytree(FIXTURES / "tiny-clip", dest / "models" / "tiny-clip")
    if with_liandan:
        shutil.copytree(REPO, dest / "extensions" / "liandan", ignore=_not_in_extension)
    return dest


def pin_repositories(root: Path) -> dict[str, str]:
    """Without --skip-prepare-environment A1111 checks each repositories/ folder's git commit, and the
    shared copy has no .git: make each a git repo of one empty commit and tell A1111 that commit is the
    pinned one (its own *_COMMIT_HASH settings), so it neither fetches nor clones."""
    env = {}
    for folder, variable in REPOSITORIES.items():
        repo = root / "repositories" / folder
        if not (repo / ".git").exists():
            git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@localhost"]
            subprocess.run([*git, "init", "-q"], check=True)
            subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "pinned"], check=True)
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        env[variable] = head.stdout.strip()
    return env


# --- a running WebUI --------------------------------------------------------------------------------


class WebUI:
    def __init__(self, root: Path, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.root = root
        self.url = url
        self.process = process
        self.log_path = log_path

    def console(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise AssertionError(
                f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}"
            ) from e

    def get(self, path: str, timeout: float = 120) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 600) -> Any:
        return self.request("POST", path, {} if body is None else body, timeout=timeout)

    # --- liandan's jobs -----------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any]) -> str:
        return self.post("/liandan/v1/jobs", spec)["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/liandan/v1/jobs/{job_id}")

    def wait_job(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        """The job's status once it has finished (done, interrupted or error)."""

        def finished() -> dict[str, Any] | None:
            status = self.job(job_id)
            return status if status["state"] in FINISHED else None

        return wait_until(finished, timeout, f"job {job_id} to finish")

    def wait_step(self, job_id: str, step: int, timeout: float = 300) -> dict[str, Any]:
        """The job's status once it has trained `step` steps (fails if it finished before)."""

        def reached() -> dict[str, Any] | None:
            status = self.job(job_id)
            if status["state"] in FINISHED and status["step"] < step:
                raise AssertionError(f"job {job_id} finished before step {step}: {status}")
            return status if status["step"] >= step else None

        return wait_until(reached, timeout, f"job {job_id} to reach step {step}")

    def run_job(self, spec: Mapping[str, Any], timeout: float = 300) -> dict[str, Any]:
        status = self.wait_job(self.submit(spec), timeout)
        assert status["state"] == "done", status
        return status

    # --- the WebUI's own API ------------------------------------------------------------------------

    def txt2img(self, prompt: str, seed: int = 1, timeout: float = 600, **extra: Any) -> Any:
        """A fixed-seed 64 px image as an array of pixels."""
        import numpy as np
        from PIL import Image

        body = {
            "prompt": prompt,
            "seed": seed,
            "steps": 4,
            "width": 64,
            "height": 64,
            "cfg_scale": 7,
            "sampler_name": "Euler",
            "batch_size": 1,
            **extra,
        }
        reply = self.post("/sdapi/v1/txt2img", body, timeout=timeout)
        with Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))) as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)

    def embeddings(self) -> dict[str, Any]:
        self.post("/sdapi/v1/refresh-embeddings")
        return self.get("/sdapi/v1/embeddings")

    def stop(self, timeout: float = 60) -> None:
        """SIGINT to the process group, as Ctrl+C in a terminal (A1111 exits at once on it); SIGKILL after."""
        if self.process.poll() is None:
            # webui.sh starts launch.py again while tmp/restart exists, which only a start that prepares
            # the environment removes
            (self.root / "tmp" / "restart").unlink(missing_ok=True)
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)


def webui_environment(venv: Venv, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a user's shell would give the WebUI: none of the test venv's paths."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        REQS_FILE=str(venv.requirements),
        PATH=f"{venv.path / 'bin'}:{env['PATH']}",
    )
    env.update(extra or {})
    return env


@contextmanager
def running_webui(
    root: Path,
    venv: Venv,
    *,
    flags: Sequence[str] = (),
    prepare_environment: bool = False,
    env: Mapping[str, str] | None = None,
    log_name: str = "console.log",
    startup_timeout: float = 600,
    launcher: Launcher = "launch.py",
) -> Iterator[WebUI]:
    """`python launch.py` in `root` on a free port; yields once the API answers and the model is loaded.

    With `prepare_environment` the WebUI checks its requirements and runs extension installers (ours:
    install.py) as a user's start does; otherwise it starts with --skip-prepare-environment. With
    `launcher="webui.sh"` A1111's own shell launcher runs launch.py (with our venv, as root: -f) and starts
    it again when it exits asking for a restart, as "Apply and restart UI" does."""
    port = free_port()
    skip = () if prepare_environment else ("--skip-prepare-environment",)
    extra = dict(env or {})
    if prepare_environment:
        extra.update(pin_repositories(root))
    arguments = [*FLAGS, *skip, "--port", str(port), *flags]
    if launcher == "launch.py":
        command = [str(venv.python), "launch.py", *arguments]
    elif launcher == "webui.sh":
        command = ["bash", "webui.sh", "-f", *arguments]
        # webui.sh's own settings: no venv of its own, this folder as the install
        extra.update(
            venv_dir="-", python_cmd=str(venv.python), install_dir=str(root.parent), clone_dir=root.name
        )
    else:
        raise ValueError(f"launcher {launcher!r}; expected 'launch.py' or 'webui.sh'")
    log_path = root.parent / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=webui_environment(venv, extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    webui = WebUI(root, f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the WebUI exited with {process.returncode}:\n{webui.console()[-6000:]}")
        console = webui.console()
        if "Stable diffusion model failed to load" in console:
            raise AssertionError(f"the WebUI could not load its model:\n{console[-6000:]}")
        # "Startup time" follows the API's middleware and the extensions' routes (on_app_started): a request
        # before it can make starlette build its stack early, and the WebUI then dies adding the middleware
        if "Model loaded in" not in console or "Startup time:" not in console:
            return False
        try:
            webui.get("/sdapi/v1/sd-models", timeout=10)
        except (OSError, AssertionError):
            return False
        return True

    try:
        wait_until(ready, startup_timeout, f"the WebUI in {root} to start (log: {log_path})", interval=0.5)
        yield webui
    finally:
        webui.stop()


# --- jobs and the page -------------------------------------------------------------------------


def ti_job(name: str, data: Path, steps: int, **top: Any) -> dict[str, Any]:
    """A 64 px textual-inversion job; `save_every` 2 so an interrupted run leaves a state to resume."""
    return {
        "kind": "textual_inversion",
        "name": name,
        "init_text": "a photo",
        "vectors": 2,
        **top,
        "train": {"max_steps": steps, "save_every": 2, "preview_every": 0, "learn_rate": "0.01"},
        "data": {"folder": str(data), "width": 64, "height": 64},
        "preview": {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": False},
    }


def hn_job(name: str, data: Path, steps: int) -> dict[str, Any]:
    return {
        "kind": "hypernetwork",
        "name": name,
        "train": {"max_steps": steps, "save_every": 2, "preview_every": 0, "learn_rate": "0.0001"},
        "data": {"folder": str(data), "width": 64, "height": 64},
        "preview": {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": False},
    }


def visible(browser: Browser, selector: str) -> bool:
    # while the page reloads, A1111's gradioApp() is not defined yet
    script = f"""(() => {{
        const root = typeof gradioApp === 'function' ? gradioApp() : document;
        const el = root.querySelector({json.dumps(selector)});
        return !!el && el.getClientRects().length > 0;
    }})()"""
    return bool(browser.evaluate(script))


def text_of(browser: Browser, selector: str) -> str:
    script = f"""(() => {{
        const el = gradioApp().querySelector({json.dumps(selector)});
        return el ? el.innerText : '';
    }})()"""
    return browser.evaluate(script)


def click_tab(browser: Browser, tabs: str, title: str) -> None:
    """Click the tab button reading `title` of the gr.Tabs `tabs` (titles repeat across the page: the
    extra-networks tabs have a "Textual Inversion" button too)."""
    script = f"""(() => {{
        const nav = gradioApp().querySelector({json.dumps(tabs + " > .tab-nav")});
        const buttons = nav ? [...nav.querySelectorAll('button')] : [];
        const hit = buttons.find(b => b.innerText.trim() === {json.dumps(title)});
        if (hit) hit.click();
        return !!hit;
    }})()"""
    wait_until(lambda: browser.evaluate(script), 30, f"the tab button {title!r} in {tabs}")


def click_button(browser: Browser, text: str, timeout: float = 30) -> None:
    """Click the visible button reading `text`, once there is one (a click on a button of a tab still
    being shown can be lost)."""
    script = f"""(() => {{
        const hit = [...gradioApp().querySelectorAll('button')]
            .find(b => b.innerText.trim() === {json.dumps(text)} && b.getClientRects().length > 0);
        if (hit) hit.click();
        return !!hit;
    }})()"""
    wait_until(lambda: browser.evaluate(script), timeout, f"a visible button {text!r}")


def open_liandan(browser: Browser, title: str) -> None:
    click_tab(browser, "#tabs", "Liandan")
    click_tab(browser, "#liandan_tabs", title)


def open_webui(browser: Browser, webui: WebUI) -> None:
    browser.open(webui.url)
    # A1111's ui.js runs its onUiLoaded callbacks once every tab is in the page
    wait_until(lambda: visible(browser, "#tab_txt2img"), 120, "the WebUI's page to render")


# --- the console ----------------------------------------------------------------------------------

PROBLEM = re.compile(r"traceback|error|warn|exception|malicious|deprecat|fail", re.IGNORECASE)


def _normalised(line: str, root: Path) -> str:
    line = line.replace(str(root), "<root>")
    return re.sub(r"\d+(\.\d+)?", "N", line).strip()


def new_problems(console: str, root: Path, baseline: str, baseline_root: Path) -> list[str]:
    """Lines of `console` that look like a warning or error and that the baseline console lacks (numbers,
    times and the WebUI folder aside)."""
    known = {_normalised(line, baseline_root) for line in baseline.splitlines()}
    return [
        line for line in console.splitlines() if PROBLEM.search(line) and _normalised(line, root) not in known
    ]


def copy_training_images(dest: Path) -> Path:
    """A writable copy of the fixtures' four 64 px training images and their captions."""
    shutil.copytree(FIXTURES / "train64", dest)
    for path in dest.iterdir():
        path.chmod(0o644)
    return dest


# --- session fixtures -------------------------------------------------------------------------------


@dataclass
class Installation:
    venv: Venv
    root: Path
    before: dict[str, str]  # the venv without our additions
    after: dict[str, str]  # after the first start with liandan
    console: str  # of that first start
    pip_log: Path  # what pip logged during it ($PIP_LOG)
    baseline_root: Path
    baseline_console: str  # the stock WebUI on the same venv, before our additions


@pytest.fixture(scope="session")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    venv = webui_venv()
    installed = set(venv.versions())
    ours = [name for name in our_additions() if name in installed]
    if ours:  # left by an earlier run: install.py must find them missing, as on a user's first start
        venv.pip("uninstall", "-y", *ours)
    before = venv.versions()

    base = tmp_path_factory.mktemp("webui-baseline")
    baseline_root = make_root(base / "root", with_liandan=False)
    with running_webui(baseline_root, venv) as baseline:
        pass
    work = tmp_path_factory.mktemp("webui")
    root = make_root(work / "root")
    pip_log = work / "pip-first-start.log"
    with running_webui(
        root,
        venv,
        prepare_environment=True,
        env={"PIP_LOG": str(pip_log)},
        log_name="console-first-start.log",
    ) as first:
        pass
    return Installation(
        venv, root, before, venv.versions(), first.console(), pip_log, baseline_root, baseline.console()
    )


@dataclass
class Session:
    webui: WebUI
    pip_log: Path  # what pip logged during the second start: nothing, if all is well
    startup_console: str  # the console until the model had loaded
    data: Path  # a copy of the fixtures' 64 px training images (img0..3.png + captions)


@pytest.fixture(scope="session")
def session(installation: Installation) -> Iterator[Session]:
    """The second start of the installed tree, shared by the tests that need no other flags."""
    work = installation.root.parent
    pip_log = work / "pip-second-start.log"
    data = copy_training_images(work / "train64")
    with running_webui(
        installation.root,
        installation.venv,
        prepare_environment=True,
        env={"PIP_LOG": str(pip_log)},
        log_name="console-second-start.log",
    ) as webui:
        yield Session(webui, pip_log, webui.console(), data)


@pytest.fixture
def webui(session: Session) -> WebUI:
    return session.webui
