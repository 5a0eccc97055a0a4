"""Shared test setup: one CPU thread per test process, offline hubs, and the A1111-written fixtures.

The fixtures live in ../shared/fixtures/webui-1.10.1 beside the checkout (or $LIANDAN_FIXTURES). Tests copy
what they write to into tmp_path: ../shared is read-only in CI. Under CI=true a missing fixture folder is
an error, not a skip, so CI shows the compatibility tests really ran.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]

# the real-WebUI harness's session fixtures (tests/real_webui.py), shared by the test_real_webui*.py files
pytest_plugins = ["real_webui"]

# The UI tests need gradio, which the newest-stack CI job leaves out on purpose: it checks the engine alone.
UI_TESTS = ["test_browser*.py", "test_*_tab.py", "test_ui_app.py", "test_spec_form.py"]
collect_ignore_glob = [] if importlib.util.find_spec("gradio") else UI_TESTS


def _fixtures_dir() -> Path:
    env = os.environ.get("LIANDAN_FIXTURES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures" / "webui-1.10.1"


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The A1111 v1.10.1 golden files (read-only)."""
    path = _fixtures_dir()
    if not (path / "MANIFEST.md").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"A1111 fixtures not found at {path}: CI must run the compatibility tests")
        pytest.skip(f"A1111 fixtures not found at {path} (set LIANDAN_FIXTURES)")
    return path


@pytest.fixture
def fixtures_copy(fixtures_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixtures."""
    dest = tmp_path / "fixtures"
    shutil.copytree(fixtures_dir, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest
