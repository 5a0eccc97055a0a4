from __future__ import annotations

from PIL import Image

from liandan.preprocess.split import should_split, split_oversized


def test_should_split_follows_the_threshold() -> None:
    assert should_split((100, 600), 64, 64, 0.5)
    assert not should_split((100, 120), 64, 64, 0.5)
    assert not should_split((64, 64), 64, 64, 1.0)


def test_tall_image_splits_into_overlapping_tiles_covering_it() -> None:
    image = Image.linear_gradient("L").resize((100, 600)).convert("RGB")
    tiles = split_oversized(image, 64, 64, 0.2)
    assert all(t.size == (64, 64) for t in tiles)
    assert len(tiles) == 8  # 600 px scaled to 384: ceil((384 - 12.8) / 51.2)
    assert tiles[0].getpixel((32, 0))[0] < 10 and tiles[-1].getpixel((32, 63))[0] > 245


def test_wide_image_splits_along_its_width() -> None:
    tiles = split_oversized(Image.new("RGB", (800, 100)), 64, 48, 0.0)
    assert all(t.size == (64, 48) for t in tiles) and len(tiles) >= 2
