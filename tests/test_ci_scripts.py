"""The CI scripts and the README agree: CI runs the README's commands on the environment it describes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CI = REPO_ROOT / ".ci"


def _readme_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert first_block, "README.md must open with a bash block of commands"
    return [line for line in first_block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    assert _readme_commands() == [
        "bash .ci/setup-env && .venv/bin/python -m liandan demo",
        "bash .ci/setup-env && .venv/bin/python -m pytest",
    ]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert f'"{_readme_commands()[1]}"' in (CI / "run").read_text()


def test_scripts_are_valid_bash() -> None:
    for script in ("run", "setup-env"):
        result = subprocess.run(["bash", "-n", str(CI / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_constraints_copy_matches_the_shared_one(fixtures_dir: Path) -> None:
    """setup-env falls back to the copy in .ci/ where ../shared is absent: it must be the same file."""
    shared = fixtures_dir.parents[1] / "webui-1.10.1-constraints.txt"
    assert (CI / "webui-1.10.1-constraints.txt").read_text() == shared.read_text()


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line.startswith("-r "):
            names |= _requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(re.split(r"[<>=;\s]", line, maxsplit=1)[0].lower())
    return names


def test_newest_stack_has_our_additions_and_no_webui_only_packages() -> None:
    names = _requirement_names(CI / "requirements-newest.txt")
    assert {"diffusers", "transformers", "accelerate", "torch", "peft", "bitsandbytes"} <= names
    assert not names & {"gradio", "torchvision", "open-clip-torch"}
