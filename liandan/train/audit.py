"""The train-time audit against the silent no-op: a job that runs, logs a loss and saves a file, yet trains
nothing (a text-encoder part that never received gradients, a variant trained as another).

At the first optimizer step that really updates (learning rate above 0, not skipped by the NaN guard or the
fp16 grad scaler) the loop checks that every parameter group the method asked to train received a non-zero
gradient and changed; at every save it checks that the written artifact holds exactly those groups. A
mismatch stops training with a message naming the group.

"Changed" compares a strided sample of each tensor (up to `SAMPLE_SIZE` values) taken before the step: a few
KB per tensor instead of a copy of a whole UNet; an optimizer that updates a tensor moves its sampled values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from liandan.errors import TrainingStopped

if TYPE_CHECKING:
    from liandan.train.method import ParamGroup

SAMPLE_SIZE = 4096


def _sample(p: torch.Tensor) -> torch.Tensor:
    flat = p.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // SAMPLE_SIZE)].clone()


class TrainingAudit:
    def __init__(self, groups: list[ParamGroup]) -> None:
        self.groups = {
            g.name: [p for p in g.params if p.requires_grad]
            for g in groups
            if any(p.requires_grad for p in g.params)
        }
        self.lr_scales = {g.name: g.lr_scale for g in groups}
        self.pending = True
        self.active = self.groups
        self.before: dict[str, list[torch.Tensor]] = {}
        self._gradient_max: dict[int, torch.Tensor] = {}  # by id(tensor), from `observe`
        self._samples: dict[int, torch.Tensor] = {}

    @property
    def trained_groups(self) -> set[str]:
        return set(self.groups)

    def observe(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        """A tensor's gradient and weights just before it steps. A fused backward (train/fused_backward.py)
        calls it from the gradient hook, where each tensor steps; otherwise `before_step` does."""
        self._gradient_max[id(p)] = grad.detach().abs().amax()
        self._samples[id(p)] = _sample(p)

    def before_step(self, step: int, observed: bool = False) -> None:
        """Between backward and the optimizer step (`observed`: after a fused backward's steps, with what
        `observe` saw): every group has a non-zero gradient; sample weights. A group the method has frozen
        since (DreamBooth's text encoder after its stop step, when a run resumes past it) is not expected to
        train now."""
        self.active = {
            name: params for name, params in self.groups.items() if any(p.requires_grad for p in params)
        }
        if not observed:
            for params in self.active.values():
                for p in params:
                    if p.grad is not None:
                        self.observe(p, p.grad)
        for name, params in self.active.items():
            flags = [self._gradient_max[id(p)] for p in params if id(p) in self._gradient_max]
            if not any(bool(flag > 0) for flag in flags):
                raise TrainingStopped(
                    f"parameter group {name!r} received no gradient at step {step + 1}: the loss does not "
                    "depend on it, so it would never train. Check that the prompts reach it (the "
                    "template's [name]) and that the model it hooks into is the one the loss calls"
                )
        # a tensor without a gradient did not step: its weights now are its weights before
        self.before = {
            name: [self._samples[id(p)] if id(p) in self._samples else _sample(p) for p in params]
            for name, params in self.active.items()
        }
        self._gradient_max, self._samples = {}, {}

    def after_step(self, step: int, learn_rate: float) -> None:
        for name, params in self.active.items():
            if learn_rate * self.lr_scales[name] == 0:
                continue  # a group the job runs at rate 0 is not expected to move
            if all(torch.equal(old, _sample(p)) for old, p in zip(self.before[name], params)):
                raise TrainingStopped(
                    f"parameter group {name!r} did not change in step {step} although it has a gradient "
                    f"(learning rate {learn_rate * self.lr_scales[name]:g}): the optimizer does not hold it"
                )
        self.pending, self.before = False, {}

    def check_saved(self, saved: set[str], where: str) -> str | None:
        """A message when the artifact does not hold exactly the trained groups, else None."""
        missing, extra = sorted(self.trained_groups - saved), sorted(saved - self.trained_groups)
        if missing:
            return f"{where} lacks the trained parameter group(s) {', '.join(map(repr, missing))}"
        if extra:
            return f"{where} holds parameter group(s) {', '.join(map(repr, extra))} the job did not train"
        return None
