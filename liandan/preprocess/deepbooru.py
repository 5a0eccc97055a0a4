"""DeepDanbooru tagger: the ResNet-custom torch port A1111 uses, loading its `model-resnet_custom_v3.pt`.

Parameter names (`n_Conv_0` ... `n_Conv_178`) and shapes match A1111's `deepbooru_model.py`, so the real
weights load as they are; the tag list is stored in the same file under "tags". The network is a ResNet
with bottleneck blocks whose stride-2 3×3 convolutions pad only right/bottom (TensorFlow "same" padding of
the original Keras model). A `width_divisor` > 1 builds the same graph with thinner layers (tests, bench).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from liandan.errors import CheckpointError
from liandan.formats.a1111_pickle import load_error_summary, torch_load_weights_only
from liandan.preprocess.image_ops import on_white, resize
from liandan.preprocess.tag_format import TagFormat, select_tags, tags_to_caption

INPUT_SIZE = 512
REAL_TAG_COUNT = 9176


@dataclass(frozen=True)
class Stage:
    in_channels: int
    width: int  # bottleneck width; blocks output 4 × width
    blocks: int
    stride: int
    projection_last: bool  # A1111's graph numbers this stage's projection after its first block


# The real network: 3 + 8 + 20 + 20 + 3 + 3 bottleneck blocks, ending at 4096 channels.
STAGES = (
    Stage(64, 64, 3, 1, False),
    Stage(256, 128, 8, 2, False),
    Stage(512, 256, 20, 2, False),
    Stage(1024, 256, 20, 2, True),
    Stage(1024, 512, 3, 2, False),
    Stage(2048, 1024, 3, 2, False),
)


@dataclass(frozen=True)
class Bottleneck:
    """A residual block over convolutions registered (and named) on the model itself."""

    reduce: nn.Conv2d
    spatial: nn.Conv2d
    expand: nn.Conv2d
    projection: nn.Conv2d | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        h = F.relu(self.reduce(x))
        pad = [0, 1, 0, 1] if self.spatial.stride[0] == 2 else [1, 1, 1, 1]
        h = F.relu(self.spatial(F.pad(h, pad)))
        return F.relu(self.expand(h) + shortcut)


class DeepDanbooruModel(nn.Module):
    """Input: NHWC float in [0, 1], 512×512. Output: per-tag sigmoid probabilities."""

    def __init__(self, tags: list[str], width_divisor: int = 1) -> None:
        super().__init__()
        self.tags = list(tags)
        self.width_divisor = width_divisor
        self._next_index = 0
        self.n_MaxPool_0 = nn.MaxPool2d(kernel_size=3, stride=2)
        stem = self._conv(3, 64 // width_divisor, 7, stride=2)
        self.stem = (stem,)
        blocks = []
        for stage in STAGES:
            blocks.extend(self._stage(stage))
        self.blocks = blocks
        self.head = (self._conv(4096 // width_divisor, len(tags), 1, bias=False, scale=False),)

    def _conv(
        self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True, scale: bool = True
    ) -> nn.Conv2d:
        """Register the next `n_Conv_<i>` (A1111's names). `scale=False`: `cout` is not divided."""
        conv = nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, bias=bias)
        self.add_module(f"n_Conv_{self._next_index}", conv)
        self._next_index += 1
        return conv

    def _stage(self, stage: Stage) -> list[Bottleneck]:
        d = self.width_divisor
        cin, width, cout = stage.in_channels // d, stage.width // d, stage.width * 4 // d
        blocks = []
        for i in range(stage.blocks):
            first = i == 0
            projection = None
            if first and not stage.projection_last:
                projection = self._conv(cin, cout, 1, stride=stage.stride)
            reduce = self._conv(cin if first else cout, width, 1)
            spatial = self._conv(width, width, 3, stride=stage.stride if first else 1)
            expand = self._conv(width, cout, 1)
            if first and stage.projection_last:
                projection = self._conv(cin, cout, 1, stride=stage.stride)
            blocks.append(Bottleneck(reduce, spatial, expand, projection))
        return blocks

    def forward(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        x = images_nhwc.permute(0, 3, 1, 2)
        x = F.relu(self.stem[0](F.pad(x, [2, 3, 2, 3])))
        x = self.n_MaxPool_0(F.pad(x, [0, 1, 0, 1], value=float("-inf")))
        for block in self.blocks:
            x = block(x)
        logits = self.head[0](x).mean(dim=(2, 3))
        return torch.sigmoid(logits)

    def state_dict_with_tags(self) -> dict[str, object]:
        """The layout of model-resnet_custom_v3.pt: parameters plus "tags"."""
        return {**self.state_dict(), "tags": list(self.tags)}


def load_deepbooru(path: Path) -> DeepDanbooruModel:
    """Load A1111's file (or one with the same layout); the width and tag count come from the file."""
    try:
        state = torch_load_weights_only(path)
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable DeepDanbooru .pt file ({load_error_summary(e)})"
        ) from e
    tags = state.pop("tags", None) if isinstance(state, dict) else None
    if not tags or "n_Conv_0.weight" not in state:
        raise CheckpointError(
            f"{path}: expected A1111's model-resnet_custom_v3.pt layout (n_Conv_* and tags)"
        )
    stem_channels = state["n_Conv_0.weight"].shape[0]
    if 64 % stem_channels:
        raise CheckpointError(f"{path}: n_Conv_0 has {stem_channels} channels; expected 64 or a divisor")
    model = DeepDanbooruModel(list(tags), width_divisor=64 // stem_channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the DeepDanbooru network: {e}") from e
    return model.eval()


class DeepbooruCaptioner:
    name = "deepbooru"

    def __init__(self, model: DeepDanbooruModel, fmt: TagFormat, device: str = "cpu") -> None:
        self.model = model.to(device)
        self.fmt = fmt
        self.device = device

    @staticmethod
    def preprocess(image: Image.Image) -> np.ndarray:
        """A1111's resize-and-fill to 512×512, as HWC float32 in [0, 1]."""
        square = resize(on_white(image), INPUT_SIZE, INPUT_SIZE, "fill")
        return np.asarray(square, dtype=np.float32) / 255.0

    @torch.inference_mode()
    def scores(self, images: list[Image.Image]) -> list[dict[str, float]]:
        batch = torch.from_numpy(np.stack([self.preprocess(im) for im in images])).to(self.device)
        probabilities = self.model(batch).float().cpu().numpy()
        return [dict(zip(self.model.tags, row.tolist())) for row in probabilities]

    def caption(self, images: list[Image.Image]) -> list[str]:
        out = []
        for scores in self.scores(images):
            out.append(tags_to_caption(select_tags(scores, self.fmt), scores, self.fmt))
        return out
