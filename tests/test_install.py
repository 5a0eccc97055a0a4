"""install.py: what it decides to install for a given environment, and a real run in a fresh venv."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_CPU_TORCH = sorted(Path("/opt/wheels").glob("torch-2.13.0+cpu-cp311-*.whl"))


def _load_install() -> ModuleType:
    spec = importlib.util.spec_from_file_location("liandan_install", REPO_ROOT / "install.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


install = _load_install()
LINUX = {"sys_platform": "linux", "platform_system": "Linux"}
# A stock A1111 v1.10.1 (requirements_versions.txt, its default torch) before liandan was added.
STOCK_WEBUI = {
    "transformers": "4.30.2",
    "torch": "2.1.2+cu121",
    "protobuf": "3.20.0",
    "huggingface-hub": "0.36.2",
}


def plan(versions: dict[str, str], importable: frozenset[str] = frozenset({"cv2"})) -> list[str]:
    additions = install.read_requirements(marker_env=LINUX)
    return install.plan_installs(additions, versions, importable.__contains__)


def test_stock_webui_gets_the_versions_that_work_with_transformers_4_30() -> None:
    assert plan(STOCK_WEBUI) == [
        "diffusers==0.31.0",
        "peft==0.13.2",
        "lycoris-lora>=3.1.0",
        "prodigyopt>=1.0",
        "schedulefree>=1.2.6",
        "bitsandbytes>=0.45.0,<=0.45.5",
        "tensorboard>=2.13.0",
        "onnxruntime>=1.17.0,<=1.26.0",
    ]


def test_newer_stack_is_not_capped_and_cv2_is_installed_only_when_missing() -> None:
    newer = {"transformers": "4.57.1", "torch": "2.8.0", "protobuf": "6.31.1"}
    assert plan(newer, importable=frozenset()) == [
        "diffusers>=0.31.0",
        "peft>=0.13.2",
        "lycoris-lora>=3.1.0",
        "prodigyopt>=1.0",
        "schedulefree>=1.2.6",
        "bitsandbytes>=0.45.0",
        "tensorboard>=2.13.0",
        "onnxruntime>=1.17.0",
        "opencv-python-headless>=4.8.0,<5",
    ]


def test_nothing_to_do_when_all_is_present_within_bounds() -> None:
    present = {
        **STOCK_WEBUI,
        "torch": "2.14.1",
        "diffusers": "0.31.0",
        "peft": "0.13.2",
        "lycoris-lora": "4.1.3",
        "prodigyopt": "1.1.2",
        "schedulefree": "1.4.1",
        "bitsandbytes": "0.50.2",
        "tensorboard": "2.20.0",
        "onnxruntime": "1.26.0",
    }
    assert plan(present) == []


def test_a_package_too_new_for_the_installed_transformers_is_replaced() -> None:
    present = {**STOCK_WEBUI, "diffusers": "0.35.1", "peft": "0.17.1", "tensorboard": "2.20.0"}
    assert plan(present)[:2] == ["diffusers==0.31.0", "peft==0.13.2"]


def test_another_provider_of_the_module_counts_as_installed() -> None:
    # onnxruntime-gpu provides `onnxruntime`, opencv-python provides `cv2`: nothing is added beside them.
    specs = plan(STOCK_WEBUI, importable=frozenset({"cv2", "onnxruntime"}))
    assert not any(spec.startswith(("onnxruntime", "opencv")) for spec in specs)


def _fake_cv2(version: str, *, cascades: bool) -> ModuleType:
    module = ModuleType("cv2")
    module.__version__ = version  # type: ignore[attr-defined]
    if cascades:
        module.CascadeClassifier = object  # type: ignore[attr-defined]
    return module


def test_an_opencv_without_cascade_classifier_is_reported_with_what_to_do() -> None:
    """OpenCV 5 imports as cv2 (so it counts as installed) but lacks what the focal crop needs."""
    opencv5 = {"cv2": _fake_cv2("5.0.0", cascades=False)}
    [problem] = install.capability_problems(install.CAPABILITIES, opencv5.get)
    assert problem.startswith("OpenCV 5.0.0 has no CascadeClassifier")
    assert 'pip install "opencv-python-headless>=4.8,<5"' in problem
    opencv4 = {"cv2": _fake_cv2("4.11.0", cascades=True)}
    assert install.capability_problems(install.CAPABILITIES, opencv4.get) == []
    assert install.capability_problems(install.CAPABILITIES, {}.get) == []  # none: requirements.txt adds it


def test_main_prints_the_capability_problem_and_installs_nothing_over_it(monkeypatch, capsys) -> None:
    monkeypatch.setattr(install, "plan_installs", lambda *args: [])
    monkeypatch.setattr(install, "import_if_present", {"cv2": _fake_cv2("5.0.0", cascades=False)}.get)
    assert install.main([]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("liandan: OpenCV 5.0.0 has no CascadeClassifier")


@pytest.mark.parametrize(
    ("torch", "expected"),
    [
        ("2.1.2+cu121", "bitsandbytes>=0.45.0,<=0.45.5"),
        ("2.2.1", "bitsandbytes>=0.45.0,<=0.47.0"),
        ("2.3.1", "bitsandbytes>=0.45.0,<=0.49.2"),
        ("2.4.0", "bitsandbytes>=0.45.0"),
        ("2.14.1", "bitsandbytes>=0.45.0"),
    ],
)
def test_bitsandbytes_follows_the_installed_torch(torch: str, expected: str) -> None:
    assert [s for s in plan({**STOCK_WEBUI, "torch": torch}) if s.startswith("bitsandbytes")] == [expected]


def test_no_bitsandbytes_on_macos() -> None:
    additions = install.read_requirements(marker_env={"sys_platform": "darwin", "platform_system": "Darwin"})
    assert "bitsandbytes" not in {a.name for a in additions}
    assert "diffusers" in {a.name for a in additions}


def test_tomli_only_where_python_has_no_tomllib() -> None:
    """The WebUI runs Python 3.10, whose standard library cannot read our TOML job files."""
    on_310 = install.read_requirements(marker_env={**LINUX, "python_version": "3.10"})
    on_311 = install.read_requirements(marker_env={**LINUX, "python_version": "3.11"})
    assert "tomli" in {a.name for a in on_310} and "tomli" not in {a.name for a in on_311}


def test_every_cap_lies_within_the_requirement_bounds() -> None:
    specifiers = {a.name: a.specifier for a in install.read_requirements(marker_env=LINUX)}
    for cap in install.COMPAT_CAPS:
        assert cap.package in specifiers, cap
        assert specifiers[cap.package].contains(cap.cap), cap


def test_the_tested_environment_satisfies_the_requirements(fixtures_dir: Path) -> None:
    """The versions CI pins for our additions must be ones install.py accepts in that same environment
    (additions the constraints do not pin, newer than the file, install at their newest there)."""
    pins = {}
    for line in (fixtures_dir.parents[1] / "webui-1.10.1-constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("#")[0].strip().partition("==")
        if sep:
            pins[install.canonicalize_name(name)] = version
    pinned = [line for line in plan(pins) if install.canonicalize_name(Requirement(line).name) in pins]
    assert pinned == []
    assert "diffusers" in pins and "peft" in pins  # the check has something to check


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--skip-install"], {}),
        ([], {"LIANDAN_SKIP_INSTALL": "1"}),
        ([], {"COMMANDLINE_ARGS": "--xformers --skip-install --port 7861"}),
    ],
)
def test_skip_install_is_heard_everywhere(argv: list[str], environ: dict[str, str]) -> None:
    assert install.skip_requested(argv, environ)


def test_no_skip_by_default() -> None:
    assert not install.skip_requested([], {"COMMANDLINE_ARGS": "--xformers", "LIANDAN_SKIP_INSTALL": "0"})


def test_constraints_freeze_what_is_installed_except_what_we_install() -> None:
    lines = install.frozen_constraints(exclude=["pytest"])
    assert f"torch=={importlib.metadata.version('torch')}" in lines
    assert not any(line.startswith("pytest==") for line in lines)


def test_main_starts_no_pip_when_nothing_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "plan_installs", lambda *_: [])
    monkeypatch.setattr(install, "pip_install", lambda specs: pytest.fail(f"pip started for {specs}"))
    assert install.main([]) == 0
    assert capsys.readouterr().out == ""


def test_main_prints_one_line_and_installs_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed: list[list[str]] = []
    monkeypatch.delenv("LIANDAN_SKIP_INSTALL", raising=False)
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)
    monkeypatch.setattr(install, "plan_installs", lambda *_: ["diffusers==0.31.0", "peft==0.13.2"])
    monkeypatch.setattr(install, "pip_install", lambda specs: installed.append(specs) or 0)
    assert install.main([]) == 0
    assert installed == [["diffusers==0.31.0", "peft==0.13.2"]]
    assert capsys.readouterr().out.splitlines() == [
        "liandan: installing diffusers==0.31.0, peft==0.13.2 (nothing installed is changed)"
    ]
    assert install.main(["--skip-install"]) == 0
    assert len(installed) == 1


# --- a real run in a fresh venv ---------------------------------------------------------------------------


def _run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=900)


def _freeze(python: Path) -> set[str]:
    result = _run([str(python), "-m", "pip", "freeze", "--all"], cwd=python.parent)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.splitlines())


def _webui_pins(fixtures_dir: Path, tmp_path: Path) -> Path:
    """A1111's pins without our additions; torch is the local CPU wheel instead (same API, 1/8 the size)."""
    source = fixtures_dir.parents[1] / "webui-1.10.1-constraints.txt"
    text = source.read_text().split("# Additions")[0]
    kept = [line for line in text.splitlines() if not line.startswith(("torch==", "torchvision=="))]
    path = tmp_path / "webui-pins.txt"
    path.write_text("\n".join(kept) + "\n")
    return path


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    """A venv path, removed afterwards: pytest keeps recent tmp dirs, and this one weighs over a GB."""
    venv = tmp_path / "venv"
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.webui_env
@pytest.mark.skipif(not LOCAL_CPU_TORCH, reason="needs the local torch 2.13.0 CPU wheel in /opt/wheels")
def test_install_in_a_fresh_webui_venv(fixtures_dir: Path, fresh_venv: Path, tmp_path: Path) -> None:
    venv = fresh_venv
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    pins = _webui_pins(fixtures_dir, tmp_path)
    webui_packages = [
        str(LOCAL_CPU_TORCH[-1]),
        *("transformers", "accelerate", "safetensors", "numpy", "Pillow", "protobuf", "huggingface_hub"),
    ]
    setup = _run([str(python), "-m", "pip", "install", "-q", "-c", str(pins), *webui_packages], cwd=tmp_path)
    assert setup.returncode == 0, setup.stdout + setup.stderr

    # A1111 runs install.py from its root, with that root (holding launch.py) on PYTHONPATH.
    webui_root = tmp_path / "webui"
    webui_root.mkdir()
    launch = webui_root / "launch.py"
    env = {**os.environ, "PYTHONPATH": str(webui_root)}
    env.pop("LIANDAN_SKIP_INSTALL", None)
    env.pop("COMMANDLINE_ARGS", None)
    # the extension's folder, where install.py keeps its private packages (.packages)
    extension = webui_root / "extensions" / "liandan"
    extension.mkdir(parents=True)
    for name in ("install.py", "requirements.txt"):
        shutil.copy(REPO_ROOT / name, extension / name)
    installer = [str(python), str(extension / "install.py")]
    before = _freeze(python)

    for args, skip_env, webui_skip in [
        (["--skip-install"], {}, False),
        ([], {"LIANDAN_SKIP_INSTALL": "1"}, False),
        ([], {}, True),
    ]:
        launch.write_text(f"import argparse\nargs = argparse.Namespace(skip_install={webui_skip})\n")
        skipped = _run(installer + args, cwd=webui_root, env={**env, **skip_env})
        assert skipped.returncode == 0, skipped.stderr
        assert skipped.stdout.startswith("liandan: --skip-install: not installing diffusers==0.31.0")
        assert _freeze(python) == before

    launch.write_text("import argparse\nargs = argparse.Namespace(skip_install=False)\n")
    first = _run(installer, cwd=webui_root, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines() == [
        "liandan: installing diffusers==0.31.0, peft==0.13.2, lycoris-lora>=3.1.0, prodigyopt>=1.0, "
        "schedulefree>=1.2.6, tensorboard>=2.13.0, onnxruntime>=1.17.0,<=1.26.0, "
        "opencv-python-headless>=4.8.0,<5 (nothing installed is changed)",
        f"liandan: installing bitsandbytes>=0.45.0 into {extension / '.packages'}, outside the WebUI's "
        "environment",
    ]
    after = _freeze(python)
    assert before <= after, f"changed: {sorted(before - after)}"
    names = {line.split("==")[0].lower() for line in after - before}
    ours = {"diffusers", "peft", "tensorboard", "onnxruntime", "opencv-python-headless"}
    assert ours <= names and "bitsandbytes" not in names
    assert install.private_version("bitsandbytes", extension / ".packages")
    assert "diffusers==0.31.0" in after
    check = _run([str(python), "-m", "pip", "check"], cwd=tmp_path)
    assert check.returncode == 0, check.stdout

    # the second start is a no-op that starts no subprocess (no pip), whatever the machine's speed
    no_subprocess = (
        "import runpy, subprocess, sys\n"
        "def refuse(*args, **kwargs): sys.exit(f'install.py started a subprocess: {args[0]}')\n"
        "subprocess.run = subprocess.Popen = refuse\n"
        f"runpy.run_path({str(extension / 'install.py')!r}, run_name='__main__')\n"
    )
    second = _run([str(python), "-c", no_subprocess], cwd=webui_root, env=env)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    assert _freeze(python) == after


def test_only_bitsandbytes_is_private_and_both_sides_agree_where_it_goes() -> None:
    """Inside the WebUI, bitsandbytes lives beside install.py, where its accelerate does not import it."""
    from liandan.private_packages import PRIVATE_DIR

    additions = install.read_requirements(marker_env=LINUX)
    assert [a.name for a in additions if a.private] == ["bitsandbytes"]
    assert install.PRIVATE_DIR == PRIVATE_DIR == REPO_ROOT / ".packages"


def test_a_private_package_counts_as_installed(tmp_path: Path) -> None:
    info = tmp_path / "bitsandbytes-0.50.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n")
    assert install.private_version("bitsandbytes", tmp_path) == "0.50.2"
    assert install.private_version("peft", tmp_path) is None


def test_import_private_finds_the_folder_last_on_the_path(tmp_path: Path, monkeypatch) -> None:
    from liandan import private_packages

    (tmp_path / "liandan_private_probe").mkdir()
    (tmp_path / "liandan_private_probe" / "__init__.py").write_text("WHERE = 'private'\n")
    monkeypatch.setattr(private_packages, "PRIVATE_DIR", tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert private_packages.import_private("liandan_private_probe").WHERE == "private"
    assert sys.path[-1] == str(tmp_path)  # the environment's own packages still win
    monkeypatch.delitem(sys.modules, "liandan_private_probe")
    with pytest.raises(ImportError):
        private_packages.import_private("liandan_nowhere")
