"""From a decoded image to the VAE's input: resize, crop, flip, scale to [-1, 1]; and the alpha loss weight.

The colour of transparent pixels is kept as it is (the alpha is dropped, as A1111's convert('RGB') does):
with `use_alpha_weight` those pixels get (almost) no weight in the loss anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from liandan.data.buckets import Geometry

if TYPE_CHECKING:
    import torch
    from PIL import Image


def crop_and_flip(image: Image.Image, geometry: Geometry, flip: bool) -> Image.Image:
    """The training pixels of `image` (any mode): scaled, cropped to the target size, mirrored if asked."""
    from PIL import Image

    if image.size != geometry.original_size:
        raise ValueError(f"image is {image.size}, geometry expects {geometry.original_size}")
    if geometry.resized_size != image.size:
        image = image.resize(geometry.resized_size, Image.BICUBIC)
    left, top = geometry.crop_left_top
    tw, th = geometry.target_size
    if (left, top, tw, th) != (0, 0, *image.size):
        image = image.crop((left, top, left + tw, top + th))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image


def to_pixel_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 in [-1, 1] from the RGB channels (alpha dropped)."""
    import torch

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(rgb / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def alpha_loss_weight(image: Image.Image, latent_size: tuple[int, int]) -> torch.Tensor:
    """[1, h, w] per-latent-pixel loss weight from the alpha channel (ones without alpha).

    A1111's rule: the alpha at latent resolution, shifted to a minimum of 0 and scaled to a mean of 1, so the
    loss stays comparable with unweighted training. We average each latent pixel's area (BOX) where A1111
    resamples bicubically, and give a uniform alpha ones where A1111 would divide by zero.
    """
    import torch
    from PIL import Image

    w, h = latent_size
    if image.mode != "RGBA":
        return torch.ones(1, h, w)
    alpha = image.getchannel("A").resize((w, h), Image.BOX)
    weight = torch.from_numpy(np.asarray(alpha, dtype=np.float32)).unsqueeze(0)
    weight -= weight.min()
    mean = weight.mean()
    return weight / mean if mean > 0 else torch.ones(1, h, w)
