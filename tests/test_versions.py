"""liandan.versions: the library report is read from metadata, without importing the libraries."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from liandan import __version__, versions

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_versions_match_the_installed_distributions() -> None:
    report = versions.library_versions()
    assert report["torch"] == importlib.metadata.version("torch")
    assert report["safetensors"] == importlib.metadata.version("safetensors")
    assert report["liandan"] in {__version__, versions.distribution_version("liandan")}
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(versions.DISTRIBUTIONS) | {"python", "platform", "cuda"} == set(report)


def test_missing_library_is_reported_not_raised() -> None:
    assert versions.distribution_version("no-such-distribution-liandan") == versions.NOT_INSTALLED


def test_asking_for_versions_imports_no_heavy_library() -> None:
    code = (
        "import json, sys; from liandan.versions import library_versions; library_versions(); "
        "print(json.dumps([m for m in ('torch', 'diffusers', 'transformers', 'gradio', 'numpy') "
        "if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cuda: Optional[str] = '12.8'", "12.8"),
        ("cuda: Optional[str] = None", "none"),
        ("cuda = '11.8'", "11.8"),
    ],
)
def test_torch_cuda_build_is_read_from_torch_version_file(
    line: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_torch = tmp_path / "torch"
    fake_torch.mkdir()
    (fake_torch / "__init__.py").write_text("")
    (fake_torch / "version.py").write_text(f"__version__ = '2.14.1'\n{line}\ngit_version = 'abc'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch")  # find_spec answers from sys.modules first
    assert versions.torch_cuda_build() == expected


def test_report_has_one_aligned_line_per_library() -> None:
    lines = versions.versions_report().splitlines()
    assert len(lines) == len(versions.library_versions())
    assert lines[0].split() == ["python", sys.version.split()[0]]
    assert len({line.index(line.split()[1], len(line.split()[0])) for line in lines}) == 1
