"""Which libraries this process would use: for provenance (saved into artifacts and logs) and `liandan info`.

Read from package metadata, never by importing the libraries: asking for versions must stay instant and must
not initialise CUDA.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
from pathlib import Path

NOT_INSTALLED = "not installed"

# Report key -> distribution name, in the order people look for them.
DISTRIBUTIONS: dict[str, str] = {
    "liandan": "liandan",
    "torch": "torch",
    "torchvision": "torchvision",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "huggingface_hub": "huggingface-hub",
    "safetensors": "safetensors",
    "peft": "peft",
    "lycoris": "lycoris-lora",
    "prodigyopt": "prodigyopt",
    "schedulefree": "schedulefree",
    "bitsandbytes": "bitsandbytes",
    "open_clip": "open-clip-torch",
    "gradio": "gradio",
    "numpy": "numpy",
    "Pillow": "Pillow",
    "tensorboard": "tensorboard",
    "onnxruntime": "onnxruntime",
}


def distribution_version(name: str) -> str:
    """The installed version, also of a package install.py keeps in liandan's private folder."""
    from liandan.private_packages import PRIVATE_DIR

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        for dist in importlib.metadata.distributions(name=name, path=[str(PRIVATE_DIR)]):
            return f"{dist.version} (in {PRIVATE_DIR})"
        return NOT_INSTALLED


def liandan_version() -> str:
    """The installed distribution's version, or the package's own when run from a checkout."""
    version = distribution_version("liandan")
    if version != NOT_INSTALLED:
        return version
    from liandan import __version__

    return __version__


def torch_cuda_build() -> str:
    """The CUDA version torch was built for ("none" for a CPU build), read from torch/version.py."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return NOT_INSTALLED
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    if not version_file.is_file():
        return "unknown"
    match = re.search(r"^cuda\b.*?=\s*['\"]?([\w.]+)", version_file.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None or match.group(1) == "None":
        return "none"
    return match.group(1)


def library_versions() -> dict[str, str]:
    """python, platform, every library liandan may use, and torch's CUDA build; missing ones say so."""
    versions = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for key, distribution in DISTRIBUTIONS.items():
        versions[key] = liandan_version() if key == "liandan" else distribution_version(distribution)
    versions["cuda"] = torch_cuda_build()
    return versions


def versions_report() -> str:
    """One `name: version` line per entry, aligned, for `python -m liandan info` and bug reports."""
    versions = library_versions()
    width = max(len(key) for key in versions)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in versions.items())
