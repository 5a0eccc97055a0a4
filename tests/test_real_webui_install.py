"""install.py as the real WebUI runs it, and a clean console at start."""

from __future__ import annotations

import re

import pytest
from packaging.version import Version
from real_webui import Installation, Session, new_problems

pytestmark = [pytest.mark.real_webui, pytest.mark.slow]


def _pins(installation: Installation) -> dict[str, Version]:
    """name -> version of every `name==version` line of the WebUI's requirements file."""
    pins = {}
    for line in installation.venv.requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s#;]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = Version(match[2])
    return pins


def test_the_first_start_installs_our_additions_and_changes_nothing_installed(
    installation: Installation,
) -> None:
    assert "liandan: installing" in installation.console
    assert installation.pip_log.is_file(), "the first start ran no pip"
    import install

    private = installation.root / "extensions" / "liandan" / ".packages"
    for addition in install.read_requirements():
        if addition.private:  # beside install.py, out of the WebUI's accelerate's sight
            assert addition.name not in installation.after, f"{addition.name} went into the WebUI's venv"
            assert install.private_version(addition.name, private), f"{addition.name} is not in {private}"
        elif addition.name != "opencv-python-headless":  # the WebUI's opencv-python already provides cv2
            assert addition.name in installation.after, f"install.py did not install {addition.name}"
    changed = {
        name: (version, installation.after.get(name))
        for name, version in installation.before.items()
        if installation.after.get(name) != version
    }
    assert not changed, f"installing liandan changed installed packages (before, after): {changed}"
    pins = _pins(installation)
    assert {name: Version(installation.after.get(name, "0")) for name in pins} == pins
    check = installation.venv.pip("check", check=False)
    assert check.returncode == 0, check.stdout
    assert "Traceback" not in installation.console


def test_a_second_start_starts_no_pip_and_loads_liandan(installation: Installation, session: Session) -> None:
    assert not session.pip_log.exists(), f"pip ran at the second start:\n{session.pip_log.read_text()[:3000]}"
    assert "liandan: installing" not in session.webui.console()
    assert installation.venv.versions() == installation.after
    assert isinstance(session.webui.get("/liandan/v1/jobs")["jobs"], list)


def test_the_console_shows_no_warning_or_error_of_ours(installation: Installation, session: Session) -> None:
    """Every warning-like line of the start with liandan is one the stock WebUI prints too."""
    problems = new_problems(
        session.startup_console, installation.root, installation.baseline_console, installation.baseline_root
    )
    assert not problems, "\n".join(problems)
