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

The finiteness check costs no host-device sync of its own: `status_values` packs the loss and the gradients'
max-abs into one tensor that the loop reads once, with the loss it reports. On a GPU with a fused AdamW (and
no fp16 grad scaler) the loop reads it not at all before stepping ("pipelined", see `pipelined_status`):
the optimizer's fused kernel takes a found-inf flag computed on the device and skips a non-finite step
itself, exactly as it does for GradScaler, and the host reads step k's `StepStatus` while step k+1's
forward and backward are already queued; the guard's bookkeeping (skip, rollback, stop) then runs one step
late, and a skipped step is taken off the step count when it is read.
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


PIPELINED_DEVICES = ("cuda",)  # where reading the status later pays: the host runs ahead of the device


def status_values(
    loss: torch.Tensor, params: list[torch.nn.Parameter], check_gradients: bool
) -> torch.Tensor:
    """[loss] or [loss, max-abs of every gradient] (with `check_gradients`), on the device. The max-abs
    norms come from the fused multi-tensor kernel clip_grad_norm_ uses; a NaN or inf anywhere makes them
    non-finite."""
    flags = [loss.detach().float().reshape(1)]
    grads = [p.grad for p in params if p.grad is not None] if check_gradients else []
    if grads:
        norms = torch._foreach_norm(grads, math.inf)
        flags.append(torch.stack([n.float() for n in norms]).amax().to(flags[0].device).reshape(1))
    return torch.cat(flags)


def found_inf(values: torch.Tensor) -> torch.Tensor:
    """The flag a fused optimizer kernel skips its step on (1.0: not finite), without leaving the device."""
    return (~torch.isfinite(values)).any().float()


def read_values(values: torch.Tensor) -> tuple[float, bool]:
    """The loss and whether everything in `values` is finite: one host-device transfer."""
    read = values.tolist()
    return read[0], all(math.isfinite(v) for v in read)


def step_status(
    loss: torch.Tensor, params: list[torch.nn.Parameter], check_gradients: bool
) -> tuple[float, bool]:
    """The step's loss and whether it and (with `check_gradients`) every gradient are finite, read now."""
    return read_values(status_values(loss, params, check_gradients))


@dataclass
class StepStatus:
    """A step's status values on their way to the host: `read` waits only for the copy, which the device
    makes after the step that computed them (later steps may be queued behind it)."""

    learn_rate: float
    epoch_step: int
    values: torch.Tensor
    ready: Any = None  # a CUDA event recorded after the copy

    @classmethod
    def send(cls, learn_rate: float, epoch_step: int, values: torch.Tensor) -> StepStatus:
        if values.device.type != "cuda":
            return cls(learn_rate, epoch_step, values)
        host = values.to("cpu", non_blocking=True)  # into pinned memory: the copy is queued, not waited for
        ready = torch.cuda.Event()
        ready.record()
        return cls(learn_rate, epoch_step, host, ready)

    def read(self) -> tuple[float, bool]:
        if self.ready is not None:
            self.ready.synchronize()
        return read_values(self.values)


def pipelined_status(optimizer: Any, device: torch.device, grad_scaler: Any, fused_backward: bool) -> bool:
    """Whether the loop may step before reading the status: the device runs ahead of the host (a GPU), no
    fp16 grad scaler sets the optimizer's found-inf flag itself, and the optimizer is one of torch's fused
    kernels, which take that flag (Adam/AdamW with fused=True; bitsandbytes, Lion, Prodigy and the rest
    read the status first)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return (
        device.type in PIPELINED_DEVICES
        and grad_scaler is None
        and not fused_backward
        and getattr(inner, "_step_supports_amp_scaling", False)
        and bool(getattr(inner, "defaults", {}).get("fused"))
    )


def step_unless_found_inf(optimizer: Any, flag: torch.Tensor) -> None:
    """One optimizer step that the fused kernel skips where `flag` is 1 (weights, moments and the step count
    stay as they were), as it does under GradScaler."""
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.found_inf = flag
    try:
        optimizer.step()
    finally:
        del inner.found_inf


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
