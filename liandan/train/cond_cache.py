"""Text conditioning computed once per prompt string, for methods whose text encoders are frozen (as A1111
precomputes conds): a cache of (context, pooled) on the training device, and the list of every prompt a
dataset can ask for when that is short (template lines x captions), so every cond can be made before training
and the text encoders may leave the GPU."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from liandan.data.dataset import DatasetMix, TrainingDataset
    from liandan.models.conditioning import Conditioning, PromptEncoder

MAX_CACHED_CONDS = 4096  # distinct prompts kept; shuffled/dropped tags make endless variants
# Encoded before training when the run can ask for no more (an SD1 cond is 77 x 768 floats: 1024 are 242 MB
# in float32, half the text encoder that may then leave the GPU)
MAX_PRECOMPUTED_CONDS = 1024


class CondCache:
    def __init__(self, encoder: PromptEncoder, device: torch.device) -> None:
        self.encoder = encoder
        self.device = device
        self.conds: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditioning of a batch from the per-prompt cache; prompts of different chunk counts (over 75
        tokens) are encoded together so they are padded alike, as A1111 does."""
        with torch.no_grad():
            for prompt in prompts:
                if prompt not in self.conds:
                    cond = self.encoder.encode([prompt])
                    if len(self.conds) < MAX_CACHED_CONDS:
                        self.conds[prompt] = (cond.context.to(self.device), _to(cond.pooled, self.device))
                    else:
                        return self._pair(self.encoder.encode(prompts))
            lengths = {self.conds[p][0].shape[1] for p in prompts}
            if len(lengths) > 1:
                return self._pair(self.encoder.encode(prompts))
            context = torch.cat([self.conds[p][0] for p in prompts])
            pooled = self.conds[prompts[0]][1]
            if pooled is not None:
                pooled = torch.cat([self.conds[p][1] for p in prompts])  # type: ignore[misc]
            return context, pooled

    def precompute(self, prompts: Iterable[str]) -> None:
        for prompt in sorted(set(prompts)):
            self([prompt])

    def _pair(self, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
        return cond.context.to(self.device), _to(cond.pooled, self.device)


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def every_prompt(dataset: TrainingDataset | DatasetMix) -> set[str] | None:
    """Every prompt the run can ask for, when they are few enough to encode before training: each image's
    caption in each template line, in every dataset, without tag shuffle or dropout. None otherwise."""
    prompts: set[str] = set()
    for part in dataset.parts:
        choices = part.prompt_choices()
        if choices is None:
            return None
        prompts |= choices
        if len(prompts) > MAX_PRECOMPUTED_CONDS:
            return None
    return prompts


def frozen_text_conds(
    encoder: PromptEncoder,
    dataset: TrainingDataset | DatasetMix,
    device: torch.device,
    move_unused_to_cpu: bool,
) -> CondCache:
    """The cache of a method whose text encoders stay frozen: every cond made before training when the run's
    prompts are few and known (`every_prompt`), and then (`move_unused_to_cpu`) the encoders leave the GPU."""
    cache = CondCache(encoder, device)
    prompts = every_prompt(dataset)
    if prompts is not None:
        cache.precompute(prompts)
        if move_unused_to_cpu:
            for text_encoder in encoder.bundle.text_encoders:
                text_encoder.to("cpu")
    return cache
