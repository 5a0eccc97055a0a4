"""The loop's exponential moving average of the trainable weights (TrainSpec.ema_decay, ema_update_every).

A shadow copy of exactly the tensors the optimizer steps, moved toward the live weights after every
`every`-th optimizer step by one fused `torch._foreach_lerp_`. Not torch.optim.swa_utils.AveragedModel:
that averages one nn.Module, while a method's trainables are parameter groups that may span several
modules or none (TI's vectors; a UNet and a text encoder; FSDP's flat shards).

What is saved, previewed, self-tested and scored is the average (`swapped_in`, which trades the tensors'
storage, no copy); the full state keeps the live weights as the trainable state and the average beside the
optimizer's, so a resume continues both bit-exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class WeightAverage:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, every: int) -> None:
        self.params, self.decay, self.every = params, decay, every
        self.shadow: list[torch.Tensor] = []

    def restart(self) -> None:
        """Start the average at the current weights."""
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step % self.every == 0:
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            p.data, self.shadow[i] = self.shadow[i], p.data

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]] | None) -> None:
        """The saved average, or (a state written without one) a new average from the current weights."""
        if not state:
            self.restart()
            return
        self.shadow = [s.to(p.device, p.dtype, copy=True) for s, p in zip(state["shadow"], self.params)]
