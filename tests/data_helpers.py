"""Helpers shared by the liandan.data tests: a tiny real AutoencoderKL and generated images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def tiny_vae(seed: int = 0):
    """A real diffusers AutoencoderKL, 4 latent channels, downscale factor 2 (fast on one CPU thread)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    ).eval()


def counted_vae(seed: int = 0):
    """A tiny VAE whose `encode` records each call's batch size in the returned list."""
    vae = tiny_vae(seed)
    calls: list[int] = []
    original = vae.encode

    def encode(x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(x, *args, **kwargs)

    vae.encode = encode
    return vae, calls


def gradient_image(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A picture whose left and right halves differ, so flips and crops are visible."""
    w, h = size
    rng = np.random.default_rng(seed)
    pixels = np.zeros((h, w, len(mode)), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    pixels[..., 2] = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = 255
        pixels[:, : w // 2, 3] = 0  # left half transparent
    return Image.fromarray(pixels, mode)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def tree_hash(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `folder`: equal before and after means untouched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
