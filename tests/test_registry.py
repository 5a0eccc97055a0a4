from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from liandan import registry
from liandan.errors import ConfigError
from liandan.jobs import job_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_a_fresh_process_knows_every_kind_from_the_registry_alone() -> None:
    """What a WebUI started with --nowebui has: no tab, no CLI parser imported, only the registry. Every
    kind must find its spec class and its runner (a renamed symbol in a runner module fails here)."""
    code = (
        "import sys\n"
        "from liandan import registry\n"
        "assert not [m for m in ('liandan.ui.tabs', 'liandan.cli') if m in sys.modules]\n"
        "for kind in registry.kinds():\n"
        "    assert registry.spec_class(kind).kind == kind\n"
        "    assert callable(registry.runner(kind)), kind\n"
        "print(' '.join(registry.kinds()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "aesthetic", "apt", "dreambooth", "hypernetwork", "lora", "preprocess", "textual_inversion"
    ]  # fmt: skip


def test_every_tab_module_exports_build() -> None:
    pytest.importorskip("gradio", reason="the tabs are Gradio's (not in the newest-stack job)")
    for method in registry.METHODS.values():
        if method.tab is not None:
            assert callable(registry.import_optional(method.tab, method.title).build)


def test_missing_optional_package_names_it_and_our_own_import_errors_propagate(tmp_path, monkeypatch) -> None:
    (tmp_path / "needs_pkg_runner.py").write_text("import liandan_absent_pkg\n\ndef run(*a):\n    pass\n")
    (tmp_path / "renamed_runner.py").write_text("from liandan.jobs import NoSuchSpec\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(registry.MethodUnavailable, match="needs the Python package 'liandan_absent_pkg'"):
        registry.import_optional("needs_pkg_runner", "Toy")
    with pytest.raises(ImportError, match="NoSuchSpec"):
        registry.import_optional("renamed_runner", "Toy")
    with pytest.raises(ModuleNotFoundError):
        registry.import_optional("liandan.methods.no_such_method", "Toy")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "cat"}, "the job has no 'kind'; expected one of: aesthetic, apt, dreambooth, hypernetwork"),
        ({"kind": "textual_inversoin"}, "did you mean 'textual_inversion'?"),
        ({"kind": 3}, "job kind 3 is unknown"),
    ],
)
def test_missing_or_unknown_kind_says_so(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        job_from_dict(data)
    assert message in str(e.value)


def test_a_kind_is_registered_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.METHODS["preprocess"])
