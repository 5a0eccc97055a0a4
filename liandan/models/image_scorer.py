"""An image scorer from a user's checkpoint (APT's discriminator): a torchvision classification network of a
named architecture with a one-output head, its weights read from a `.safetensors` or `.pt` state dict (the
`.pt` without running pickled code). Its logit says how much an image looks like what it was trained on;
frozen, it passes gradients back to whatever made the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from liandan.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

# ImageNet statistics: torchvision's classification networks are built for inputs normalised with them
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from liandan.errors import FormatError
    from liandan.formats.a1111_pickle import load_pt

    if not path.is_file():
        raise ConfigError(f"discriminator checkpoint {path} does not exist")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else load_pt(path)
    except (FormatError, SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ConfigError(f"discriminator checkpoint {path} does not load: {error}") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"discriminator checkpoint {path} holds no state dict of tensors")
    return state


class ImageScorer(torch.nn.Module):
    """`forward(images in [-1, 1], [B, 3, H, W]) -> logits [B]`."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images + 1) / 2 - self.mean) / self.std
        return self.network(x).reshape(images.shape[0], -1)[:, 0]


def load_image_scorer(path: Path, architecture: str) -> ImageScorer:
    """The frozen scorer of `architecture` (a torchvision model name) with the weights in `path`; a file that
    does not load, or weights of another architecture, are a ConfigError saying which."""
    import torchvision

    network = torchvision.models.get_model(architecture, weights=None, num_classes=1)
    state = _read_state_dict(path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[:3]
        raise ConfigError(
            f"discriminator checkpoint {path} is not a {architecture} with a one-output head: "
            f"{' '.join(line.strip() for line in first)}"
        ) from error
    scorer = ImageScorer(network)
    scorer.requires_grad_(False)
    return scorer.eval()
