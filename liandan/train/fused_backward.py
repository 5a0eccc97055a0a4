"""Fused backward (TrainSpec.fused_backward): one optimizer per trainable tensor, stepped from that tensor's
post-accumulate-grad hook as soon as its gradient is complete, the gradient freed at once, so a full
fine-tune never holds the whole gradient (the mechanism of PyTorch's tutorial "How to save memory by fusing
the optimizer step into the backward pass"; this is our own implementation).

The loop sees one optimizer-like object: `param_groups` (every per-tensor optimizer's group, so the lr
schedule reaches each), `state_dict`/`load_state_dict` (all of them, in order), `step`/`zero_grad` that have
nothing left to do, `train`/`eval` for schedule-free. Limits (refused by TrainSpec or the loop):
gradient_accumulation 1 (one step per backward); no clipping by norm (it needs the whole gradient; by value
works per tensor); no fp16 grad scaler (it must see every gradient before any step); not Prodigy (it
estimates its step size over the whole group); one process (the hook fires before gradients are averaged
over processes). The NaN guard reads the loss before backward, since the step happens inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from liandan.errors import ConfigError
from liandan.train.method import ParamGroup
from liandan.train.optimizers import build_optimizer, set_optimizer_mode

Observer = Callable[[torch.Tensor, torch.Tensor], None]


class FusedOptimizer:
    def __init__(
        self, name: str, groups: list[ParamGroup], weight_decay: float, say: Callable[[str], None]
    ) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self._by_tensor: dict[int, torch.optim.Optimizer] = {}
        for group in groups:
            for p in group.params:
                if not p.requires_grad:
                    continue
                one = ParamGroup(group.name, [p], group.lr_scale, group.weight_decay)
                # the choice of implementation is said once, not once per tensor
                optimizer = build_optimizer(
                    name, [one], 0.0, weight_decay, say if not self.optimizers else _quiet
                )
                self.optimizers.append(optimizer)
                self._by_tensor[id(p)] = optimizer
        if not self.optimizers:
            raise ConfigError("the method has no trainable parameters")
        self.clip_value: float | None = None  # set by the loop for each step
        self.observe: Observer | None = None  # the audit's, on the step it checks
        self._handles = [
            p.register_post_accumulate_grad_hook(self._step_tensor)
            for optimizer in self.optimizers
            for p in optimizer.param_groups[0]["params"]
        ]

    def _step_tensor(self, p: torch.Tensor) -> None:
        if self.observe is not None:
            self.observe(p, p.grad)
        if self.clip_value is not None:
            p.grad.clamp_(-self.clip_value, self.clip_value)
        optimizer = self._by_tensor[id(p)]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self) -> None:
        """Nothing: each tensor stepped in backward."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing: each gradient was freed after its step."""

    def train(self) -> None:
        for optimizer in self.optimizers:
            set_optimizer_mode(optimizer, training=True)

    def eval(self) -> None:
        for optimizer in self.optimizers:
            set_optimizer_mode(optimizer, training=False)

    def state_dict(self) -> dict[str, Any]:
        return {"per_tensor": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("per_tensor")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(
                f"the saved optimizer state is not a fused backward's of {len(self.optimizers)} tensors"
            )
        for optimizer, one in zip(self.optimizers, saved):
            optimizer.load_state_dict(one)

    def close(self) -> None:
        """Remove the gradient hooks: the model may outlive the job."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _quiet(message: str) -> None:
    """No message."""
