"""Shared test setup: one CPU thread per test process, offline hubs, and the A1111-written fixtures.

The fixtures live in ../shared/fixtures/webui-1.10.1 beside the checkout (or $LIANDAN_FIXTURES). Tests copy
what they write to into tmp_path: ../shared is read-only in CI. Every test that reads them is marked
`fixtures`. Where they are missing those tests skip, and the summary line counts them as "compatibility
tests not run"; under CI=true a missing fixture folder is an error and any skipped fixture test fails the
run, so CI shows the compatibility tests really ran. With LIANDAN_REQUIRE_UI_TESTS=1 (CI's main
environment) a run that collected no UI or no browser test is an error too.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]

# the real-WebUI harness's session fixtures (tests/real_webui.py), shared by the test_real_webui*.py files
pytest_plugins = ["real_webui"]

# The UI tests need gradio, which the newest-stack CI job leaves out on purpose: it checks the engine alone.
UI_TESTS = [
    "test_browser*.py",
    "test_*_tab.py",
    "test_ui_app.py",
    "test_spec_form.py",
    "test_sections.py",
    "test_rest.py",  # FastAPI comes with gradio
    "test_server_restart.py",
    "test_rest_schema.py",
]
collect_ignore_glob = [] if importlib.util.find_spec("gradio") else UI_TESTS


FIXTURES_MISSING = "A1111 fixtures not found"
NOT_RUN = "compatibility tests not run"
_skipped_fixture_tests: list[str] = []


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
            pytest.fail(f"{FIXTURES_MISSING} at {path}: CI must run the compatibility tests")
        pytest.skip(f"{FIXTURES_MISSING} at {path} (set LIANDAN_FIXTURES)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _examples_untouched() -> Iterator[None]:
    """The shipped example images and jobs, which examples and end-to-end tests train on, stay as they are."""
    from data_helpers import tree_hash

    examples = REPO_ROOT / "examples"
    before = tree_hash(examples) if examples.is_dir() else {}
    yield
    assert (tree_hash(examples) if examples.is_dir() else {}) == before, (
        "a test changed files under examples/"
    )


@pytest.fixture
def train64(fixtures_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the fixtures' train64 dataset (A1111's own 64 px training images) for a test to train on.
    Training never writes into a dataset: the test fails if any file in it changed, appeared or went."""
    from data_helpers import tree_hash

    folder = tmp_path / "train64"
    shutil.copytree(fixtures_dir / "train64", folder)
    before = tree_hash(folder)
    yield folder
    assert tree_hash(folder) == before, f"the test changed its source dataset {folder}"


@pytest.fixture
def fixtures_copy(fixtures_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixtures."""
    dest = tmp_path / "fixtures"
    shutil.copytree(fixtures_dir, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "fixtures_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fixtures)
    if os.environ.get("LIANDAN_REQUIRE_UI_TESTS") != "1":
        return
    ui = [i for i in items if any(fnmatch.fnmatch(i.path.name, pattern) for pattern in UI_TESTS)]
    browser = [i for i in items if i.get_closest_marker("browser")]
    if not ui or not browser:
        raise pytest.UsageError(
            f"LIANDAN_REQUIRE_UI_TESTS=1 but this run collected {len(ui)} UI and {len(browser)} browser "
            "tests: gradio is missing from this environment, or the selection left them out"
        )


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """A test skipped for want of the fixtures counts apart in the summary line."""
    if report.skipped and FIXTURES_MISSING in str(report.longrepr):
        return NOT_RUN, "s", "NOT RUN (no fixtures)"
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "fixtures" in report.keywords:
        _skipped_fixture_tests.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") and _skipped_fixture_tests and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    not_run = terminalreporter.stats.get(NOT_RUN, [])
    if not_run:
        terminalreporter.write_sep(
            "-",
            f"{len(not_run)} {NOT_RUN}: the A1111-written fixtures are not at {_fixtures_dir()}; "
            "README.md (Tests) says where they come from and how to set LIANDAN_FIXTURES",
            yellow=True,
        )
    if os.environ.get("CI") and _skipped_fixture_tests:
        terminalreporter.write_sep(
            "-", f"CI: {len(_skipped_fixture_tests)} fixture tests skipped, which CI does not allow", red=True
        )
        for nodeid in _skipped_fixture_tests:
            terminalreporter.write_line(f"  {nodeid}")
