"""What a training method supplies to the one loop. A method never writes its own loop.

The loop (`liandan.train.loop`) owns: the Accelerator, the optimizer and lr schedule, gradient accumulation
and clipping, mixed precision, seeds, full-state checkpoints and bit-exact resume, the loss CSV and
TensorBoard logs, progress events and interrupts, the NaN guard, previews and the output self-test.
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

    def parameter_groups(self) -> list[ParamGroup]:
        """The trainable parameters; everything else in the model is frozen by the method."""
        ...

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules holding trainable weights. The loop switches them to train mode and, on several
        processes, starts every rank from rank 0's weights and averages gradients itself (no DDP wrapper:
        `loss` calls the method's own modules, which a wrapper would bypass)."""
        ...

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean loss of one micro-batch (the loop scales it for accumulation)."""
        ...

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights: checkpoints, resume and the NaN rollback use it."""
        ...

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def after_optimizer_step(self, step: int) -> None:
        """Per-step hook (e.g. restore embedding rows that must not change). May do nothing."""
        ...

    def save(self, step: int, final: bool) -> SavedArtifact:
        """Write the artifact where A1111 finds it (final) or a step copy in the log dir (periodic)."""
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
