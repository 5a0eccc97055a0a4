"""Install what liandan adds to the WebUI's environment: only what is missing, never changing anything else.

A1111 runs this file at every start, as a subprocess of its own Python, with the WebUI root as cwd and on
PYTHONPATH. The list of packages lives in requirements.txt beside this file; COMPAT_CAPS narrows it to what
the installed libraries accept. When all is present this reads a few package versions and exits, without
starting pip. When something is missing it runs pip once, with a constraints file that holds every installed
distribution at its installed version, so pip can add packages but never upgrade or downgrade the WebUI's.

Also runs on its own (`python install.py`) in any environment; `--skip-install`, LIANDAN_SKIP_INSTALL=1 or
the WebUI's own `--skip-install` (in COMMANDLINE_ARGS or launch.args) turn it off.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # an environment without `packaging` still has pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

REQUIREMENTS_FILE = Path(__file__).resolve().with_name("requirements.txt")
# "# private" lines go here, beside this file, not into the WebUI's environment (liandan/private_packages.py)
PRIVATE_DIR = Path(__file__).resolve().with_name(".packages")
IMPORT_HINT = "import:"
PRIVATE_HINT = "private"
TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Addition:
    """One line of requirements.txt that applies to this platform."""

    name: str  # canonical distribution name
    specifier: SpecifierSet
    import_name: str | None = None  # any distribution providing this module satisfies the line
    private: bool = False  # goes into PRIVATE_DIR, out of the WebUI's sight, unless the WebUI has it


@dataclass(frozen=True)
class Cap:
    """While the installed `dependency` is older than `below`, `package` must not be newer than `cap`."""

    package: str
    dependency: str
    below: str
    cap: str
    why: str


# Ordered from the oldest dependency up: the first cap that applies to a package wins.
COMPAT_CAPS: tuple[Cap, ...] = (
    Cap("diffusers", "transformers", "4.37", "0.31.0", "0.32+ pipelines import SiglipImageProcessor"),
    Cap("peft", "transformers", "4.36", "0.13.2", "newer peft imports transformers.Cache"),
    Cap("bitsandbytes", "torch", "2.2", "0.45.5", "0.46 requires torch>=2.2"),
    Cap("bitsandbytes", "torch", "2.3", "0.47.0", "0.48 requires torch>=2.3"),
    Cap("bitsandbytes", "torch", "2.4", "0.49.2", "0.50 requires torch>=2.4"),
    Cap("onnxruntime", "protobuf", "4", "1.26.0", "1.27 requires protobuf>=4.25.8"),
)


@dataclass(frozen=True)
class Capability:
    """An attribute a feature needs from a module that another distribution (often the WebUI's) may
    provide: an installed module counts as the requirement, so check what it can do, not that it imports."""

    module: str
    attribute: str
    problem: str  # what breaks and what to do; {version} is the module's version


CAPABILITIES: tuple[Capability, ...] = (
    Capability(
        "cv2",
        "CascadeClassifier",
        "OpenCV {version} has no CascadeClassifier (5.0 dropped it), so the focal-point crop cannot find "
        'faces: install OpenCV 4 in its place (pip install "opencv-python-headless>=4.8,<5"), or put '
        "face_detection_yunet_2023mar.onnx in models/opencv/ for the YuNet detector",
    ),
)


def read_requirements(
    path: Path = REQUIREMENTS_FILE, marker_env: Mapping[str, str] | None = None
) -> list[Addition]:
    """The lines of requirements.txt whose environment marker holds here (or in `marker_env`)."""
    additions = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        spec, _, comment = raw.partition("#")
        if not spec.strip():
            continue
        requirement = Requirement(spec.strip())
        if requirement.marker is not None and not requirement.marker.evaluate(
            dict(marker_env) if marker_env else None
        ):
            continue
        hint = comment.strip()
        import_name = hint[len(IMPORT_HINT) :].strip() if hint.startswith(IMPORT_HINT) else None
        name = canonicalize_name(requirement.name)
        additions.append(Addition(name, requirement.specifier, import_name, hint.startswith(PRIVATE_HINT)))
    return additions


def _parse_version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def capped_specifier(addition: Addition, versions: Mapping[str, str | None]) -> SpecifierSet:
    """The addition's bounds, narrowed by the first cap whose dependency is installed and too old."""
    for cap in COMPAT_CAPS:
        if cap.package != addition.name:
            continue
        dependency = _parse_version(versions.get(cap.dependency))
        if dependency is not None and dependency < Version(cap.below):
            return addition.specifier & SpecifierSet(f"<={cap.cap}")
    return addition.specifier


def pip_spec(name: str, specifier: SpecifierSet) -> str:
    """`name==v` when the bounds leave one version, else `name>=a,<=b` (pip and people both read it)."""
    lows = [s.version for s in specifier if s.operator == ">="]
    highs = [s.version for s in specifier if s.operator == "<="]
    if lows and highs and Version(lows[0]) == Version(highs[0]):
        return f"{name}=={highs[0]}"
    ordered = sorted(specifier, key=lambda s: (s.operator != ">=", s.version))
    return name + ",".join(str(s) for s in ordered)


def plan_installs(
    additions: Iterable[Addition],
    versions: Mapping[str, str | None],
    importable: Callable[[str], bool],
) -> list[str]:
    """The pip specs to install: additions that are missing or outside their (capped) bounds.

    `versions` maps canonical distribution names to installed versions (None: not installed); it must hold
    the additions and the dependencies named in COMPAT_CAPS. `importable(module)` tells whether another
    distribution already provides an addition's module.
    """
    specs = []
    for addition in additions:
        specifier = capped_specifier(addition, versions)
        installed = _parse_version(versions.get(addition.name))
        if installed is None and addition.import_name and importable(addition.import_name):
            continue
        if installed is not None and specifier.contains(installed, prereleases=True):
            continue
        specs.append(pip_spec(addition.name, specifier))
    return specs


def capability_problems(
    capabilities: Iterable[Capability], load: Callable[[str], ModuleType | None]
) -> list[str]:
    """The problem of each capability whose module `load` finds but which lacks the attribute."""
    problems = []
    for capability in capabilities:
        module = load(capability.module)
        if module is not None and not hasattr(module, capability.attribute):
            problems.append(capability.problem.format(version=getattr(module, "__version__", "?")))
    return problems


def import_if_present(name: str) -> ModuleType | None:
    if not module_exists(name):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:  # a broken install: pip cannot help either, and the feature reports it when used
        return None


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def private_version(name: str, folder: Path = PRIVATE_DIR) -> str | None:
    """The version of `name` installed into `folder` by an earlier run (None: not there)."""
    for dist in importlib.metadata.distributions(path=[str(folder)]):
        if canonicalize_name(dist.metadata["Name"] or "") == name:
            return dist.version
    return None


def module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def frozen_constraints(exclude: Iterable[str]) -> list[str]:
    """`name==version` for every installed distribution (the first one on sys.path wins), but `exclude`."""
    skipped = {canonicalize_name(name) for name in exclude}
    lines: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name or _parse_version(dist.version) is None:
            continue
        key = canonicalize_name(name)
        if key not in skipped and key not in lines:
            lines[key] = f"{key}=={dist.version}"
    return sorted(lines.values())


def skip_requested(argv: list[str], environ: Mapping[str, str]) -> bool:
    """--skip-install given to us, to the WebUI (COMMANDLINE_ARGS), or LIANDAN_SKIP_INSTALL set."""
    if "--skip-install" in argv:
        return True
    if environ.get("LIANDAN_SKIP_INSTALL", "").strip().lower() in TRUTHY:
        return True
    return "--skip-install" in shlex.split(environ.get("COMMANDLINE_ARGS", ""), posix=os.name != "nt")


def webui_skips_install() -> bool:
    """The WebUI's parsed flags, when this runs inside it (imported only when pip would run: it is slow)."""
    try:
        import launch  # the WebUI root is on PYTHONPATH when A1111 runs us
    except ImportError:
        return False
    return bool(getattr(getattr(launch, "args", None), "skip_install", False))


def pip_install(specs: list[str], private: bool = False) -> int:
    """Run pip once with everything installed frozen; print its output only when it fails. `private`
    installs into PRIVATE_DIR without dependencies (they are the WebUI's own: torch, numpy)."""
    names = [Requirement(spec).name for spec in specs]
    with tempfile.TemporaryDirectory(prefix="liandan-install-") as tmp:
        constraints = Path(tmp) / "installed.txt"
        constraints.write_text("\n".join(frozen_constraints(names)) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "pip", "install", "--prefer-binary", "-c", str(constraints)]
        if private:
            command += ["--no-deps", "--upgrade", "--target", str(PRIVATE_DIR)]
        command += specs
        if os.environ.get("INDEX_URL"):  # the WebUI's own setting for a pip mirror
            command += ["--index-url", os.environ["INDEX_URL"]]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(result.stdout[-4000:] + result.stderr[-4000:], file=sys.stderr)
        print(
            f"liandan: pip could not install {', '.join(specs)} without changing the installed packages "
            "(output above); install them by hand or start the WebUI with a compatible set.",
            file=sys.stderr,
        )
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    additions = read_requirements()
    wanted = {a.name for a in additions} | {cap.dependency for cap in COMPAT_CAPS}
    versions = {name: installed_version(name) for name in wanted}
    private = {a.name for a in additions if a.private}
    for name in private:  # the WebUI's own copy, if it has one, else ours
        versions[name] = versions[name] or private_version(name)
    specs = plan_installs(additions, versions, module_exists)
    for problem in capability_problems(CAPABILITIES, import_if_present):
        print(f"liandan: {problem}", file=sys.stderr)
    if not specs:
        return 0
    if skip_requested(argv, os.environ) or webui_skips_install():
        print(f"liandan: --skip-install: not installing {', '.join(specs)}; some features will be missing")
        return 0
    public = [spec for spec in specs if Requirement(spec).name not in private]
    ours = [spec for spec in specs if Requirement(spec).name in private]
    if public:
        print(f"liandan: installing {', '.join(public)} (nothing installed is changed)", flush=True)
    if ours:
        print(f"liandan: installing {', '.join(ours)} into {PRIVATE_DIR}, outside the WebUI's environment")
    status = pip_install(public) if public else 0
    if ours and status == 0:
        status = pip_install(ours, private=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
