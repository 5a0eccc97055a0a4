"""The NaN guard: a step whose loss or gradients are not finite never reaches the optimizer.

Policy "stop" ends training at the first such step; "rollback" restores the last good snapshot (trainable
weights + optimizer state, kept in CPU memory every few steps and at each save), skips the batch and goes on,
until `MAX_ROLLBACKS_IN_A_ROW` bad steps come in a row. Either way the user gets a TrainingStopped whose
message says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from liandan.errors import TrainingStopped

MAX_ROLLBACKS_IN_A_ROW = 3
SNAPSHOT_EVERY = 50  # steps between in-memory snapshots (also taken at every save)


def to_cpu_copy(value: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples with every tensor cloned to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu_copy(v) for v in value)
    return value


def grads_are_finite(params: list[torch.nn.Parameter]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


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
    def __init__(self, policy: str, mixed_precision: str) -> None:
        self.policy = policy
        self.mixed_precision = mixed_precision
        self.snapshot: Snapshot | None = None
        self.bad_in_a_row = 0
        self.rollbacks = 0

    def remember(
        self, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict[str, Any]
    ) -> None:
        """Keep a good state to return to (only the policy "rollback" needs one)."""
        if self.policy == "rollback":
            self.snapshot = Snapshot(step, to_cpu_copy(trainable), to_cpu_copy(optimizer_state))

    def good_step(self) -> None:
        self.bad_in_a_row = 0

    def bad_step(self, step: int, what: str, learn_rate: float | None) -> Snapshot:
        """Record a non-finite step; return the snapshot to restore, or raise TrainingStopped."""
        self.bad_in_a_row += 1
        where = f"{what} is not finite (NaN/inf) at step {step + 1}"
        if self.policy == "stop":
            raise TrainingStopped(
                f"training stopped: {where}. To fix: {advice(self.mixed_precision, learn_rate)}"
            )
        if self.snapshot is None:
            raise TrainingStopped(
                f"training stopped: {where} and there is no good state to roll back to. "
                f"To fix: {advice(self.mixed_precision, learn_rate)}"
            )
        if self.bad_in_a_row > MAX_ROLLBACKS_IN_A_ROW:
            raise TrainingStopped(
                f"training stopped: {where}, after {MAX_ROLLBACKS_IN_A_ROW} rollbacks in a row to step "
                f"{self.snapshot.step}. To fix: {advice(self.mixed_precision, learn_rate)}"
            )
        self.rollbacks += 1
        return self.snapshot
