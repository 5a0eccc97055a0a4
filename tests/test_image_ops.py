from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from liandan.preprocess.image_ops import (
    ImageSkipped,
    flipped_copies,
    on_white,
    open_image,
    resize,
    save_image,
    to_rgb_or_rgba,
)


def test_open_image_refuses_empty_and_non_images_with_the_reason(tmp_path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(ImageSkipped, match="empty file"):
        open_image(tmp_path / "empty.png")
    with pytest.raises(ImageSkipped, match="not an image"):
        open_image(tmp_path / "text.png")


def test_sixteen_bit_grey_keeps_its_tones() -> None:
    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))  # 16-bit grey: mode "I;16"
    assert grey.mode == "I;16"
    rgb = to_rgb_or_rgba(grey)
    assert rgb.mode == "RGB"
    assert 120 <= rgb.getpixel((0, 0))[0] <= 135  # mid grey, not clipped to white


def test_transparency_is_kept_and_composited_on_white_for_captioners() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    rgba = to_rgb_or_rgba(palette)
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0))[3] == 0
    assert on_white(rgba).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["stretch", "crop", "fill"])
def test_resize_modes_give_the_target_size(mode) -> None:
    image = Image.new("RGB", (300, 100), "red")
    assert resize(image, 64, 48, mode).size == (64, 48)


def test_crop_mode_keeps_the_center_and_fill_mode_keeps_everything() -> None:
    image = Image.new("RGB", (300, 100), "red")
    image.paste((0, 0, 255), (0, 0, 50, 100))  # blue band at the far left
    assert resize(image, 64, 64, "crop").getpixel((0, 32)) == (255, 0, 0)
    assert resize(image, 64, 64, "fill").getpixel((2, 32))[2] > 200


def test_flipped_copies() -> None:
    image = Image.new("RGB", (4, 2), "black")
    image.putpixel((0, 0), (255, 255, 255))
    copies = dict(flipped_copies(image, "both"))
    assert copies["flip-h"].getpixel((3, 0)) == (255, 255, 255)
    assert copies["flip-v"].getpixel((0, 1)) == (255, 255, 255)
    assert flipped_copies(image, "none") == []


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_save_image_writes_a_readable_file_and_no_temporary(tmp_path, fmt) -> None:
    target = save_image(Image.new("RGBA", (8, 8), (10, 20, 30, 255)), tmp_path / f"x.{fmt}", fmt)
    with Image.open(target) as im:
        assert im.size == (8, 8)
    assert [p.name for p in tmp_path.iterdir()] == [f"x.{fmt}"]
