"""Find captioner weights where A1111 keeps them, or download them once with a progress bar.

Offline (or with LIANDAN_OFFLINE=1) missing files are one `CheckpointError` listing each file, the path
to put it at and the address to get it from.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Sequence
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


def ensure_weights(
    weights: Sequence[WeightFile], models_dir: Path, allow_download: bool = True
) -> list[Path]:
    """The local paths of `weights`, downloading each missing one to models/<its first folder>/.

    When some cannot be had, one CheckpointError lists every file still missing, where to put it and where
    to get it, so a user offline fetches them all at once instead of one per run.
    """
    found = [find_weights(weight, models_dir) for weight in weights]
    missing = [weight for weight, path in zip(weights, found) if path is None]
    if missing and (not allow_download or offline()):
        raise CheckpointError(_missing_message(missing, models_dir, "downloads are off"))
    for index, weight in enumerate(missing):
        try:
            download(weight.url, _target(weight, models_dir))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            message = _missing_message(missing[index:], models_dir, f"download failed: {reason}")
            raise CheckpointError(message) from e
    return [path or _target(weight, models_dir) for weight, path in zip(weights, found)]


def _target(weight: WeightFile, models_dir: Path) -> Path:
    return models_dir / weight.folders[0] / weight.name


def _missing_message(missing: Sequence[WeightFile], models_dir: Path, why: str) -> str:
    files = "\n".join(f"  {_target(w, models_dir)}  from {w.url}" for w in missing)
    count = f"{len(missing)} weight files are" if len(missing) > 1 else "a weight file is"
    return f"{count} missing ({why}); download each and put it at its path:\n{files}"


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
