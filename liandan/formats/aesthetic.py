"""Aesthetic embeddings: the mean CLIP image feature of a set of images, unit length, one per text encoder.

Layout (what we write, and what the aesthetic-gradients extension reads):
- `.pt`, SD1/SD2: one tensor [1, D] (torch.save of the tensor, as that extension wrote it; D = 768 for
  ViT-L/14, 1024 for ViT-H/14). SDXL: a dict {"clip_l": [1, 768], "clip_g": [1, 1280]}, the keys of SDXL
  textual-inversion files. Written through `a1111_pickle`, so a stock A1111 with safe-unpickle loads it.
- `.safetensors`: the same tensors under their keys ("clip_l" SD1, "clip_h" SD2, "clip_l" + "clip_g"
  SDXL), with metadata `liandan_aesthetic` (format version), `family`, `clip_model`, `image_count`.
Old files hold the mean of unnormalised features: every feature is normalised when loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from liandan.errors import FormatError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = "1"
EXTENSIONS = (".safetensors", ".pt")
# a bare tensor (the old extension's file) is the feature of the model's only text encoder
SINGLE = ""
# features in the order of a model's text encoders (safetensors keeps its keys sorted)
KEY_ORDER = (SINGLE, "clip_l", "clip_h", "clip_g")
FileFormat = Literal["pt", "safetensors"]


@dataclass
class AestheticEmbedding:
    """`features`: feature key ("clip_l", "clip_h", "clip_g", or SINGLE for an old bare tensor) -> [1, D]."""

    features: dict[str, torch.Tensor]
    family: str = ""
    clip_model: str = ""
    image_count: int = 0
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        widths = ", ".join(f"{key or 'feature'} {tensor.shape[-1]}" for key, tensor in self.features.items())
        return f"aesthetic embedding {self.name!r} ({widths} wide)"


def _unit(name: str, key: str, value: object) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.numel() != value.shape[-1]:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise FormatError(f"{name}: {key or 'the feature'} is {shape}; expected a tensor [1, D]")
    vector = value.detach().float().reshape(1, -1)
    norm = float(vector.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise FormatError(f"{name}: {key or 'the feature'} is zero or not finite; the file is damaged")
    return vector / norm


def save_aesthetic(embedding: AestheticEmbedding, path: Path) -> Path:
    """Write `embedding` to `path` (.pt or .safetensors) atomically."""
    from liandan.atomic_files import write_bytes_atomic

    features = {key: tensor.detach().float().cpu().contiguous() for key, tensor in embedding.features.items()}
    if path.suffix == ".pt":
        from liandan.formats.a1111_pickle import save_pt_a1111

        return save_pt_a1111(next(iter(features.values())) if len(features) == 1 else features, path)
    if path.suffix != ".safetensors":
        raise FormatError(f"{path}: aesthetic embeddings are .pt or .safetensors")
    from safetensors.torch import save

    metadata = {
        "liandan_aesthetic": FORMAT_VERSION,
        "family": embedding.family,
        "clip_model": embedding.clip_model,
        "image_count": str(embedding.image_count),
    }
    return write_bytes_atomic(path, save(features, metadata=metadata))


def load_aesthetic(path: Path) -> AestheticEmbedding:
    """An aesthetic embedding from a .pt (ours or the old extension's) or .safetensors file."""
    path = Path(path)
    name = path.stem
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                raw: object = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as error:
            raise FormatError(f"{path}: not a safetensors file, or a damaged one ({error})") from error
    elif path.suffix == ".pt":
        from liandan.formats.a1111_pickle import load_pt

        raw = load_pt(path)
    else:
        raise FormatError(f"{path}: aesthetic embeddings are .pt or .safetensors")
    import torch

    if isinstance(raw, torch.Tensor):
        raw = {SINGLE: raw}
    if not isinstance(raw, Mapping) or not raw:
        raise FormatError(f"{path}: holds {type(raw).__name__}, not an aesthetic embedding (a tensor [1, D])")
    features = {str(key): _unit(str(path), str(key), value) for key, value in raw.items()}
    order = {key: index for index, key in enumerate(KEY_ORDER)}
    features = dict(sorted(features.items(), key=lambda item: order.get(item[0], len(order))))
    try:
        count = int(metadata.get("image_count", 0))
    except ValueError:
        count = 0
    return AestheticEmbedding(
        features,
        family=metadata.get("family", ""),
        clip_model=metadata.get("clip_model", ""),
        image_count=count,
        name=name,
        metadata=metadata,
    )


def list_aesthetic_embeddings(folder: Path) -> dict[str, Path]:
    """Name -> file of the aesthetic embeddings in `folder` (a .safetensors wins over a .pt of one name)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for suffix in reversed(EXTENSIONS):
        found.update({path.stem: path for path in sorted(folder.glob(f"*{suffix}")) if path.is_file()})
    return dict(sorted(found.items()))


def aesthetic_file(folder: Path, name: str, file_format: FileFormat) -> Path:
    return folder / f"{name}.{file_format}"
