"""Split images much longer than the target aspect into overlapping W×H tiles (A1111 "Split oversized")."""

from __future__ import annotations

import math

from PIL import Image


def should_split(size: tuple[int, int], width: int, height: int, threshold: float) -> bool:
    """True when the image's aspect, relative to the target's, is below `threshold` (A1111's test)."""
    iw, ih = size
    ratio = (iw * height) / (ih * width) if ih > iw else (ih * width) / (iw * height)
    return ratio < 1.0 and ratio <= threshold


def split_oversized(image: Image.Image, width: int, height: int, overlap_ratio: float) -> list[Image.Image]:
    """Scale the short side to the target, then cut tiles along the long side, overlapping by the ratio."""
    if not 0.0 <= overlap_ratio < 1.0:
        raise ValueError(f"overlap_ratio must be in [0, 1), got {overlap_ratio}")
    tall = image.height > image.width
    # Work in "tall" coordinates: tiles of tile_w × tile_h stacked vertically.
    tile_w, tile_h = (width, height) if tall else (height, width)
    across, along = (image.width, image.height) if tall else (image.height, image.width)
    scaled_along = max(tile_h, along * tile_w // across)
    new_size = (tile_w, scaled_along) if tall else (scaled_along, tile_w)
    scaled = image.resize(new_size, Image.Resampling.LANCZOS)

    count = max(1, math.ceil((scaled_along - tile_h * overlap_ratio) / (tile_h * (1.0 - overlap_ratio))))
    step = (scaled_along - tile_h) / (count - 1) if count > 1 else 0.0
    tiles = []
    for i in range(count):
        offset = int(step * i)
        box = (0, offset, tile_w, offset + tile_h) if tall else (offset, 0, offset + tile_h, tile_w)
        tiles.append(scaled.crop(box))
    return tiles
