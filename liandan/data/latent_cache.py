"""VAE latents of the training images: encoding, sampling, and a cache in RAM or on disk.

A cache entry holds the VAE's latent distribution (`mean`, `std`, before the scaling factor) of one image at
one geometry and flip, plus its alpha loss weight when the image has alpha. Latents are then drawn by A1111's
`latent_sampling` rules:
- "once": one sample per image, drawn once (from a generator seeded by the image) and reused every epoch;
- "deterministic": the mean (A1111 sets the distribution's std to 0);
- "random": a fresh sample each time it is used, from a generator the caller seeds by (seed, epoch, index).
The sample is multiplied by the VAE's scaling factor (after subtracting its shift factor where it has one).

On disk an entry is `<key>.safetensors`, written atomically, where the key hashes the image's bytes, the
model identity (a VAE fingerprint or a checkpoint hash the caller passes), the geometry and the flip; a
different model, crop or image can never hit a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from liandan.atomic_files import atomic_path
from liandan.data.buckets import Geometry
from liandan.errors import DatasetError

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)

LatentSampling = Literal["once", "deterministic", "random"]
CACHE_FORMAT = 1
Entry = dict[str, "torch.Tensor"]  # "mean", "std", optional "alpha_weight"


def cache_key(content_hash: str, model_id: str, geometry: Geometry, flip: bool) -> str:
    parts = {
        "format": CACHE_FORMAT,
        "image": content_hash,
        "model": model_id,
        "geometry": astuple(geometry),
        "flip": flip,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def vae_fingerprint(vae: AutoencoderKL) -> str:
    """A hash of the VAE's weights: the model identity of cache entries when no checkpoint hash is given."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def encode(vae: AutoencoderKL, pixels: torch.Tensor, source: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the latent distribution of one [3, H, W] image in [-1, 1], float32 on the CPU."""
    import torch

    param = next(vae.parameters())
    with torch.no_grad():
        dist = vae.encode(pixels.unsqueeze(0).to(param.device, param.dtype)).latent_dist
    mean, std = dist.mean[0].float().cpu(), dist.std[0].float().cpu()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise DatasetError(
            f"the VAE gave non-finite latents for {source} (a half-precision VAE overflowing?); "
            "encode with a float32 VAE"
        )
    return mean, std


def sample(
    entry: Entry, mode: LatentSampling, generator: torch.Generator, scaling: float, shift: float = 0.0
) -> torch.Tensor:
    """The scaled latent of an entry ("once" and "random" differ only in how `generator` is seeded)."""
    import torch

    latent = entry["mean"]
    if mode != "deterministic":
        std = entry["std"]
        latent = latent + std * torch.randn(std.shape, generator=generator, dtype=std.dtype)
    return (latent - shift) * scaling


class RamCache:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def put(self, key: str, entry: Entry, info: dict[str, str]) -> None:
        self._entries[key] = entry


class DiskCache:
    """Entries as safetensors files in a folder the caller chooses (e.g. the job's log dir)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Entry | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = load_file(path)
        except (OSError, SafetensorError) as e:
            entry = {}
            log.warning("latent cache entry %s is unreadable (%s); encoding again", path, e)
        # an unreadable or incomplete entry is encoded again and rewritten
        return entry if {"mean", "std"} <= entry.keys() else None

    def put(self, key: str, entry: Entry, info: dict[str, str]) -> None:
        from safetensors.torch import save_file

        with atomic_path(self.path(key)) as tmp:
            save_file({k: v.contiguous() for k, v in entry.items()}, str(tmp), metadata=info)
