"""The conftest hooks that keep skipped compatibility tests visible, and make CI fail on them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURE_TEST = f"{TESTS / 'test_a1111_pickle.py'}::test_a1111_rejects_torch_default_zip_but_accepts_ours"


def _pytest(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "LIANDAN_REQUIRE_UI_TESTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env={**environ, "PYTHONPATH": str(TESTS.parent), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_conftest(folder: Path) -> None:
    """tests/conftest.py, the plugin it loads (the real-WebUI fixtures, with their browser driver) and the
    helpers its fixtures use."""
    for name in ("conftest.py", "real_webui.py", "browser_driver.py", "data_helpers.py"):
        shutil.copy(TESTS / name, folder / name)


def test_missing_fixtures_are_counted_in_the_summary_line_and_fail_ci(tmp_path: Path) -> None:
    done = _pytest(FIXTURE_TEST, cwd=tmp_path, LIANDAN_FIXTURES=str(tmp_path / "none"))
    assert done.returncode == 0, done.stdout
    assert "1 compatibility tests not run" in done.stdout.splitlines()[-1]
    assert "README.md (Tests) says where they come from and how to set LIANDAN_FIXTURES" in done.stdout

    in_ci = _pytest(FIXTURE_TEST, cwd=tmp_path, LIANDAN_FIXTURES=str(tmp_path / "none"), CI="true")
    assert in_ci.returncode == 1 and "CI must run the compatibility tests" in in_ci.stdout


def test_a_fixture_test_skipped_for_another_reason_fails_ci(tmp_path: Path) -> None:
    _copy_conftest(tmp_path)
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_reads_fixtures(fixtures_dir):\n    pytest.skip('some other reason')\n"
    )
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "MANIFEST.md").write_text("fake")
    assert _pytest(cwd=tmp_path, LIANDAN_FIXTURES=str(fixtures)).returncode == 0
    in_ci = _pytest(cwd=tmp_path, LIANDAN_FIXTURES=str(fixtures), CI="true")
    assert in_ci.returncode == 1
    assert "CI: 1 fixture tests skipped" in in_ci.stdout
    assert "test_skips.py::test_reads_fixtures" in in_ci.stdout


def test_a_run_without_ui_tests_is_refused_where_they_are_required(tmp_path: Path) -> None:
    done = _pytest(str(TESTS / "test_atomic_files.py"), cwd=tmp_path, LIANDAN_REQUIRE_UI_TESTS="1")
    assert done.returncode == 4  # pytest's usage error
    assert "collected 0 UI and 0 browser tests" in done.stderr


@pytest.mark.webui_env
def test_a_run_with_ui_and_browser_tests_passes_the_requirement(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the UI tests need gradio (not in the newest-stack job)")
    ui_and_browser = [str(TESTS / "test_spec_form.py"), str(TESTS / "test_browser.py"), "--collect-only"]
    assert _pytest(*ui_and_browser, cwd=tmp_path, LIANDAN_REQUIRE_UI_TESTS="1").returncode == 0
