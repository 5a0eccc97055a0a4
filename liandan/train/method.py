"""What a training method supplies to the one loop. A method never writes its own loop.

The loop (`liandan.train.loop`) owns: the Accelerator, the optimizer and lr schedule, gradient accumulation
and clipping, mixed precision, seeds, full-state checkpoints and bit-exact resume, the loss CSV and
TensorBoard logs, progress events and interrupts, the NaN guard, previews and the output self-test, the
train-time audit (every group asked for gets gradients, changes and is saved), the validation loss.

Several processes: `gradient_sync` says how gradients meet.
- "all_reduce": small trainables (embedding vectors, a hypernetwork). The loop starts every rank from rank
  0's weights and averages the gradients of `parameter_groups()` in one flat all-reduce per optimizer step;
  the method may use its modules however it likes (TI splices vectors into prompts, a hypernetwork runs
  inside the UNet's attention), which a DDP wrapper would not see.
- "prepare": large trainables (a whole UNet, a text encoder). The loop passes `trainable_modules()` and the
  optimizer through `accelerator.prepare` (DDP with bucketed all-reduce overlapped with the backward; FSDP or
  DeepSpeed from `accelerate config`) and hands the wrapped modules back through
  `use_prepared_modules(modules)` before the first loss; `loss()` must then compute the prediction by
  calling those wrappers (their forward is where DDP hooks in), never the bare modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass
class ParamGroup:
    """Trainable tensors sharing one learning rate (scaled from the job's rate by `lr_scale`)."""

    name: str
    params: list[torch.nn.Parameter]
    lr_scale: float = 1.0
    weight_decay: float | None = None


@dataclass
class SavedArtifact:
    """What a save wrote: the files, and how to render a preview with the artifact switched on/off."""

    paths: list[Path]
    step: int
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TrainingMethod(Protocol):
    kind: str  # registry name: "textual_inversion", "hypernetwork", ...
    name: str  # the artifact's name (embedding name, hypernetwork name, ...)
    gradient_sync: str  # "all_reduce" | "prepare" (see the module docstring)

    def parameter_groups(self) -> list[ParamGroup]:
        """The trainable parameters; everything else in the model is frozen by the method."""
        ...

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules holding trainable weights. The loop switches them to train mode; with gradient_sync
        "prepare" it wraps them for several processes (see the module docstring)."""
        ...

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean loss of one micro-batch (the loop scales it for accumulation). A batch carrying "noise" and
        "timesteps" (the validation set's fixed ones) must be noised with those, not with fresh draws."""
        ...

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights (detached; they may be the live tensors: the loop copies what it keeps to
        the CPU). Checkpoints, resume and the NaN rollback use it."""
        ...

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def after_optimizer_step(self, step: int) -> None:
        """Per-step hook (e.g. restore embedding rows that must not change). May do nothing."""
        ...

    def save(self, step: int, final: bool) -> SavedArtifact:
        """Write the artifact where A1111 finds it (final) or a step copy in the log dir (periodic)."""
        ...

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        """The names of the parameter groups the artifact's files hold, read back from the files (keys
        only where the format allows): the audit checks them against the groups that trained."""
        ...

    def preview(self, prompt: str, seed: int, enabled: bool) -> Image.Image:
        """A fixed-seed image with the trained artifact switched on or off (the output self-test)."""
        ...

    def close(self) -> None:
        """Undo what the method did to the model (hooks, injected layers), whatever way the job ended; the
        model may be the host's and outlive the job. May do nothing."""
        ...

    # Optional, not part of the protocol check: `attach_optimizer(optimizer) -> int`, called once when the
    # loop has built its optimizer (before resuming a saved run, which overrides both). The method may keep
    # the optimizer (to write A1111's `.optim` sidecars), load an artifact's saved optimizer state into it,
    # and returns the step to start counting from (an artifact trained earlier continues from its step).
    # Required with gradient_sync "prepare": `use_prepared_modules(modules: list[torch.nn.Module])`, the
    # wrapped `trainable_modules()` in the same order, called once before the first loss.
