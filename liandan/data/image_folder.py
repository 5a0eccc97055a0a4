"""Find the usable images of a dataset folder, and say which files were skipped and why.

Every candidate is decoded in full once while scanning, so a truncated or corrupt file is caught here (and
listed with its reason for the UI/CLI) rather than in the middle of training. Source files are only read.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
# files that live beside images on purpose: never reported as skipped
COMPANION_EXTENSIONS = frozenset({".txt"})
ATTENTION_MAP_SUFFIX = "_att.png"  # `<image stem>_att.png`: APT's per-image loss weight, not an image


def attention_map_path(image: Path) -> Path:
    return image.with_name(f"{image.stem}{ATTENTION_MAP_SUFFIX}")


def _is_attention_map(path: Path, found: set[Path]) -> bool:
    """An `x_att.png` beside an image `x.*` is that image's attention map."""
    if not path.name.endswith(ATTENTION_MAP_SUFFIX):
        return False
    stem = path.name.removesuffix(ATTENTION_MAP_SUFFIX)
    return any(path.with_name(f"{stem}{ext}") in found for ext in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ImageRecord:
    """One usable image. `size` is (width, height) after the EXIF orientation is applied."""

    path: Path
    content_hash: str  # sha256 of the file's bytes: the latent cache key
    size: tuple[int, int]
    has_alpha: bool


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class FolderScan:
    folder: Path
    images: list[ImageRecord]
    skipped: list[SkippedFile]

    def report(self) -> str:
        return describe(self.folder, len(self.images), self.skipped)


def describe(folder: Path, count: int, skipped: list[SkippedFile], details: list[str] | None = None) -> str:
    """A few lines for the UI/CLI: how many images, `details`, and every skipped file with its reason."""
    lines = [f"{count} image(s) in {folder}, {len(skipped)} file(s) skipped", *(details or [])]
    lines += [f"  skipped {s.path}: {s.reason}" for s in skipped]
    return "\n".join(lines)


def decode_image(data: bytes) -> Image.Image:
    """Decode fully, apply the EXIF orientation, and normalise the mode to RGB or RGBA (alpha kept)."""
    from PIL import Image, ImageOps

    image = Image.open(io.BytesIO(data))
    image.load()  # raises on truncated data, unlike Image.open
    image = ImageOps.exif_transpose(image)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def open_image(path: Path) -> Image.Image:
    """A dataset image as RGB or RGBA, upright."""
    return decode_image(path.read_bytes())


def _candidates(folder: Path, recursive: bool) -> list[Path]:
    if recursive:
        found = [Path(root) / name for root, _dirs, names in os.walk(folder) for name in names]
    else:
        found = [p for p in folder.iterdir() if p.is_file()]
    # sorted: the index of an image (and so its seeded randomness) must not depend on directory order
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _inspect(path: Path) -> ImageRecord | SkippedFile:
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as e:
        return SkippedFile(path, f"cannot read: {e.strerror or e}")
    if not data:
        return SkippedFile(path, "empty file")
    try:
        image = decode_image(data)
    except UnidentifiedImageError:
        return SkippedFile(path, "not an image (unrecognised content)")
    except Image.DecompressionBombError as e:
        return SkippedFile(path, f"too large: {e}")
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated/corrupt data
        return SkippedFile(path, f"corrupt or truncated image: {e}")
    return ImageRecord(
        path=path,
        content_hash=hashlib.sha256(data).hexdigest(),
        size=image.size,
        has_alpha=image.mode == "RGBA",
    )


def scan_image_folder(folder: Path | str, recursive: bool = False) -> FolderScan:
    """All usable images of `folder` (sorted by relative path), and the files that were skipped.

    Raises DatasetError when the folder is missing or gives no usable image.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist or is not a folder")
    images: list[ImageRecord] = []
    skipped: list[SkippedFile] = []
    candidates = _candidates(folder, recursive)
    found = set(candidates)
    for path in candidates:
        suffix = path.suffix.lower()
        if suffix in COMPANION_EXTENSIONS or _is_attention_map(path, found):
            continue
        if suffix not in IMAGE_EXTENSIONS:
            kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
            skipped.append(SkippedFile(path, f"not an image file type (expected one of {kinds})"))
            continue
        result = _inspect(path)
        (images if isinstance(result, ImageRecord) else skipped).append(result)
    if not images:
        scan = FolderScan(folder, images, skipped)
        where = "" if recursive else " (sub-folders are not searched unless 'recursive' is on)"
        raise DatasetError(f"no usable image in dataset folder {folder}{where}\n{scan.report()}")
    return FolderScan(folder, images, skipped)
