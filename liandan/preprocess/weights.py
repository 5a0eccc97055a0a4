"""Find captioner weights where A1111 keeps them, or download them once with a progress bar.

Offline (or with LIANDAN_OFFLINE=1) a missing file is a `CheckpointError` naming the file, the folder to
put it in and the address to get it from.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from liandan.atomic_files import atomic_path
from liandan.errors import CheckpointError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    """A file below A1111's models/ folder. `folders` are searched in order; downloads go to the first."""

    name: str
    folders: tuple[str, ...]
    url: str


DEEPBOORU = WeightFile(
    "model-resnet_custom_v3.pt",
    ("torch_deepdanbooru", "DeepDanbooru"),  # v1.10.1 uses the first; the dev branch renamed it
    "https://github.com/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt",
)
YUNET = WeightFile(
    "face_detection_yunet_2023mar.onnx",
    ("opencv",),
    "https://github.com/opencv/opencv_zoo/blob/b6e370b10f641879a87890d44e42173077154a05/models/"
    "face_detection_yunet/face_detection_yunet_2023mar.onnx?raw=true",
)


def hub_file(repo: str, filename: str, folder: str) -> WeightFile:
    """A file of a Hugging Face repository, stored as models/<folder>/<repo name>/<filename>."""
    local = f"{folder}/{repo.split('/')[-1]}"
    return WeightFile(filename, (local,), f"https://huggingface.co/{repo}/resolve/main/{filename}")


def find_weights(weight: WeightFile, models_dir: Path) -> Path | None:
    for folder in weight.folders:
        candidate = models_dir / folder / weight.name
        if candidate.is_file():
            return candidate
    return None


def offline() -> bool:
    return os.environ.get("LIANDAN_OFFLINE", "") not in ("", "0")


def ensure_weights(weight: WeightFile, models_dir: Path, allow_download: bool = True) -> Path:
    """The local path of `weight`, downloading it to models/<first folder>/ when missing."""
    found = find_weights(weight, models_dir)
    if found is not None:
        return found
    target = models_dir / weight.folders[0] / weight.name
    if not allow_download or offline():
        raise CheckpointError(_missing_message(weight, target, "downloads are off"))
    try:
        download(weight.url, target)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(_missing_message(weight, target, f"download failed: {reason}")) from e
    return target


def _missing_message(weight: WeightFile, target: Path, why: str) -> str:
    return (
        f"{weight.name} was not found ({why}). Download it from {weight.url} "
        f"and put it in the folder {target.parent}"
    )


def download(url: str, target: Path) -> Path:
    """Stream `url` to `target` atomically with a tqdm progress bar (stderr)."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "liandan"})
    with urllib.request.urlopen(request, timeout=30) as response, atomic_path(target) as tmp:
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            tmp.open("wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}") as bar,
        ):
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    return target
