"""Preview images and the output self-test: does the trained artifact change the picture at all?

After each save the method renders the same prompt and seed with the artifact off and on; the pair is saved
side by side (labelled "without" / "with") in `<run_dir>/images/`. Identical images mean the artifact is not
applied (wrong keys, a hook that is not installed, a zero update): the loop warns the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageChops, ImageDraw

from liandan.atomic_files import atomic_path

if TYPE_CHECKING:
    from liandan.train.method import TrainingMethod

LABEL_HEIGHT = 14
NO_CHANGE_WARNING = (
    "the trained artifact changes nothing: the images with and without it are identical at step {step}. "
    "The artifact is probably not applied (check its keys/hooks), "
    "or the learning rate is too small to move it."
)


def save_png(image: Image.Image, path: Path) -> Path:
    """Keeps the image's A1111 "parameters" text (see sampling.infotext), which PNG Info shows."""
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    if isinstance(image.info.get("parameters"), str):
        text.add_text("parameters", image.info["parameters"])
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=text)
    return path


def side_by_side(without: Image.Image, with_artifact: Image.Image) -> Image.Image:
    """The two renders next to each other, each labelled above."""
    width = without.width + with_artifact.width
    height = max(without.height, with_artifact.height) + LABEL_HEIGHT
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for x, image, label in ((0, without, "without"), (without.width, with_artifact, "with")):
        sheet.paste(image.convert("RGB"), (x, LABEL_HEIGHT))
        draw.text((x + 2, 1), label, fill="black")
    return sheet


def images_identical(a: Image.Image, b: Image.Image) -> bool:
    if a.size != b.size:
        return False
    return ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


@dataclass(frozen=True)
class SelfTestResult:
    path: Path
    identical: bool
    with_artifact: Image.Image


def run_self_test(
    method: TrainingMethod, prompt: str, seed: int, images_dir: Path, step: int
) -> SelfTestResult:
    without = method.preview(prompt, seed, enabled=False)
    with_artifact = method.preview(prompt, seed, enabled=True)
    path = save_png(side_by_side(without, with_artifact), images_dir / f"{method.name}-{step}-selftest.png")
    return SelfTestResult(path, images_identical(without, with_artifact), with_artifact)


def save_preview(
    method: TrainingMethod,
    prompt: str,
    seed: int,
    images_dir: Path,
    step: int,
    image: Image.Image | None = None,
) -> Path:
    """A1111's periodic preview `images/<name>-<step>.png` (reuses the self-test's render when given)."""
    if image is None:
        image = method.preview(prompt, seed, enabled=True)
    return save_png(image, images_dir / f"{method.name}-{step}.png")
