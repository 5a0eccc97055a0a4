"""The NaN guard: a step whose loss or gradients are not finite never reaches the optimizer.

Policy "stop" ends training at the first such step. Policy "rollback" skips the step, as GradScaler does:
the weights and optimizer state stay as the last good step left them, the batch is consumed. When
`SKIPS_BEFORE_ROLLBACK` steps in a row are bad, the weights themselves lead to NaNs: the loop rolls the
trainable weights and optimizer state back to the last good state (the step counter and the batch order go
on) and tries again; as many bad steps in a row after that end training. Either way the user gets a
TrainingStopped whose message says what to change.

Where the good state comes from depends on its size: trainables of up to `SNAPSHOT_MAX_BYTES` (embedding
vectors, a hypernetwork, a small LoRA) keep an in-memory CPU snapshot, taken at the start, every
`SNAPSHOT_EVERY` steps and at each save; larger ones (a whole UNet, whose Adam state is tens of GB) roll back
from the last full state on disk, which every save writes anyway.

The finiteness check costs no host-device sync of its own: `step_status` packs the loss and a
gradients-finite flag into one tensor that the loop reads once, with the loss it reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from liandan.errors import TrainingStopped

SKIPS_BEFORE_ROLLBACK = 3  # bad steps in a row that trigger a rollback; as many more after it stop training
SNAPSHOT_EVERY = 50  # steps between in-memory snapshots (also taken at every save)
SNAPSHOT_MAX_BYTES = 256 * 2**20  # trainable weights + two optimizer slots (Adam) kept in CPU memory
OPTIMIZER_SLOTS = 2  # Adam's two moments per weight: what a snapshot holds besides the weights


def to_cpu_copy(value: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples with every tensor cloned to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu_copy(v) for v in value)
    return value


def step_status(
    loss: torch.Tensor, params: list[torch.nn.Parameter], check_gradients: bool
) -> tuple[float, bool]:
    """The step's loss and whether it and (with `check_gradients`) every gradient are finite, read from the
    device in one transfer. The max-abs norms come from the fused multi-tensor kernel clip_grad_norm_ uses;
    a NaN or inf anywhere makes them non-finite."""
    flags = [loss.detach().float().reshape(1)]
    grads = [p.grad for p in params if p.grad is not None] if check_gradients else []
    if grads:
        norms = torch._foreach_norm(grads, math.inf)
        flags.append(torch.stack([n.float() for n in norms]).amax().to(flags[0].device).reshape(1))
    values = torch.cat(flags).tolist()  # the one host-device sync of the step
    return values[0], all(math.isfinite(v) for v in values)


def snapshot_fits_in_memory(params: list[torch.nn.Parameter]) -> bool:
    weights = sum(p.numel() * p.element_size() for p in params)
    return weights * (1 + OPTIMIZER_SLOTS) <= SNAPSHOT_MAX_BYTES


def advice(mixed_precision: str, learn_rate: float | None) -> str:
    tips = [
        f"lower the learning rate (it was {learn_rate:g})"
        if learn_rate is not None
        else "lower the learning rate"
    ]
    if mixed_precision == "fp16":
        tips.append("use bf16 (or no mixed precision) instead of fp16")
    tips.append(
        "the VAE in fp16 makes NaNs with SD1/SDXL: encode latents with an fp32 VAE (or the fp16-fix VAE)"
    )
    tips.append("turn on gradient clipping (clip_grad_mode = 'norm')")
    return "; ".join(tips)


@dataclass
class Snapshot:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]


class NanGuard:
    """Decides what a bad step does; keeps the in-memory snapshot when `in_memory` (see the module doc)."""

    def __init__(self, policy: str, mixed_precision: str, in_memory: bool) -> None:
        self.policy = policy
        self.mixed_precision = mixed_precision
        self.in_memory = in_memory and policy == "rollback"
        self.snapshot: Snapshot | None = None
        self.bad_in_a_row = 0
        self.skipped = 0
        self.rollbacks = 0

    def remember(
        self, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict[str, Any]
    ) -> None:
        """Keep a good state to return to (only small trainables under the policy "rollback")."""
        if self.in_memory:
            self.snapshot = Snapshot(step, to_cpu_copy(trainable), to_cpu_copy(optimizer_state))

    def good_step(self) -> None:
        self.bad_in_a_row = 0

    def bad_step(self, step: int, what: str, learn_rate: float | None) -> Literal["skip", "rollback"]:
        """Record a non-finite step: skip it, roll back, or raise TrainingStopped."""
        self.bad_in_a_row += 1
        where = f"{what} is not finite (NaN/inf) at step {step + 1}"
        fix = f"To fix: {advice(self.mixed_precision, learn_rate)}"
        if self.policy == "stop":
            raise TrainingStopped(f"training stopped: {where}. {fix}")
        if self.bad_in_a_row >= 2 * SKIPS_BEFORE_ROLLBACK:
            raise TrainingStopped(
                f"training stopped: {where}; {self.bad_in_a_row} steps in a row were not finite, also after "
                f"rolling back to the last good state. {fix}"
            )
        if self.bad_in_a_row == SKIPS_BEFORE_ROLLBACK:
            self.rollbacks += 1
            return "rollback"
        self.skipped += 1
        return "skip"

    def no_state_to_roll_back_to(self, step: int, where: str, learn_rate: float | None) -> TrainingStopped:
        return TrainingStopped(
            f"training stopped: {SKIPS_BEFORE_ROLLBACK} steps in a row up to step {step + 1} were not finite "
            f"and there is no saved state to roll back to yet ({where}). "
            f"To fix: {advice(self.mixed_precision, learn_rate)}"
        )
