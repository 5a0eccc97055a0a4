"""Auto-sized crop: pick the W×H (multiples of 64 within bounds) that best fits each image, center-crop.

Same search as A1111's "Auto-sized crop": candidates within the dimension and area bounds whose aspect
error is under the threshold, ranked by area then error ("maximize area") or error then area.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image

Objective = Literal["maximize_area", "minimize_error"]


@dataclass(frozen=True)
class AutosizeSettings:
    min_dim: int = 384
    max_dim: int = 768
    min_area: int = 64 * 64
    max_area: int = 640 * 640
    objective: Objective = "maximize_area"
    error_threshold: float = 0.1


def aspect_error(image_size: tuple[int, int], width: int, height: int) -> float:
    """0 when the aspects match, towards 1 as they differ."""
    iw, ih = image_size
    ratio = (iw / ih) / (width / height)
    return 1.0 - (ratio if ratio < 1.0 else 1.0 / ratio)


def choose_size(image_size: tuple[int, int], settings: AutosizeSettings) -> tuple[int, int] | None:
    """The best (width, height), or None when nothing is within the error threshold."""
    candidates = [
        (w, h)
        for w in range(settings.min_dim, settings.max_dim + 1, 64)
        for h in range(settings.min_dim, settings.max_dim + 1, 64)
        if settings.min_area <= w * h <= settings.max_area
        and aspect_error(image_size, w, h) <= settings.error_threshold
    ]
    if not candidates:
        return None

    def rank(wh: tuple[int, int]) -> tuple[float, float]:
        area, error = wh[0] * wh[1], aspect_error(image_size, *wh)
        return (area, -error) if settings.objective == "maximize_area" else (-error, area)

    return max(candidates, key=rank)


def center_crop_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Crop the largest centered box of the target aspect and resize it to width × height."""
    iw, ih = image.size
    if ih / height < iw / width:
        box_w = width * ih / height
        box = ((iw - box_w) / 2, 0, (iw + box_w) / 2, ih)
    else:
        box_h = height * iw / width
        box = (0, (ih - box_h) / 2, iw, (ih + box_h) / 2)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def autosize_crop(image: Image.Image, settings: AutosizeSettings) -> Image.Image | None:
    size = choose_size(image.size, settings)
    return None if size is None else center_crop_resize(image, *size)
