from __future__ import annotations

import numpy as np
import torch
from data_helpers import gradient_image
from PIL import Image

from liandan.data.buckets import fit
from liandan.data.pixels import alpha_loss_weight, crop_and_flip, to_pixel_tensor


def test_flip_really_mirrors_the_pixels() -> None:
    image = gradient_image((64, 64))
    g = fit(image.size, (64, 64), "crop")
    plain = np.asarray(crop_and_flip(image, g, flip=False))
    mirrored = np.asarray(crop_and_flip(image, g, flip=True))
    assert np.array_equal(mirrored, plain[:, ::-1])
    assert not np.array_equal(mirrored, plain)


def test_crop_takes_the_centre() -> None:
    image = Image.new("RGB", (192, 64), (255, 0, 0))
    image.paste((0, 255, 0), (64, 0, 128, 64))  # green middle third
    out = crop_and_flip(image, fit(image.size, (64, 64), "crop"), flip=False)
    assert out.size == (64, 64) and set(out.getdata()) == {(0, 255, 0)}
    stretched = crop_and_flip(image, fit(image.size, (64, 64), "stretch"), flip=False)
    assert stretched.getpixel((2, 32))[0] > 200  # A1111's stretch keeps the red edges


def test_pixel_tensor_range_and_layout() -> None:
    image = Image.new("RGB", (4, 2), (255, 0, 128))
    x = to_pixel_tensor(image)
    assert x.shape == (3, 2, 4) and x.dtype == torch.float32
    assert x[0].eq(1).all() and x[1].eq(-1).all() and abs(float(x[2, 0, 0]) - (128 / 127.5 - 1)) < 1e-6


def test_alpha_weight_follows_a1111_normalisation() -> None:
    image = gradient_image((64, 64), "RGBA")  # left half transparent
    weight = alpha_loss_weight(image, (8, 8))
    assert weight.shape == (1, 8, 8)
    assert weight.min() == 0 and torch.isclose(weight.mean(), torch.tensor(1.0))
    assert weight[..., :4].eq(0).all() and weight[..., 4:].eq(2).all()
    opaque = Image.new("RGBA", (16, 16), (1, 2, 3, 255))
    assert alpha_loss_weight(opaque, (4, 2)).eq(1).all()  # A1111 would give NaN (0/0)
    assert alpha_loss_weight(Image.new("RGB", (16, 16)), (4, 2)).shape == (1, 2, 4)
