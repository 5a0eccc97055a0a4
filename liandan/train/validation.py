"""The held-out validation set: scored without gradients at fixed timesteps with fixed noise, so every
score compares alike (train/training_job.py builds it from the job's `validation` section)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from liandan.data.dataset import derive_seed
from liandan.train import distributed
from liandan.train.checkpointing import preserved_rng

if TYPE_CHECKING:
    from accelerate import Accelerator

    from liandan.train.method import TrainingMethod


@dataclass(frozen=True)
class Validation:
    """A held-out set: every item is scored at each of `timesteps` with noise seeded by (seed, item)."""

    dataset: Any
    every: int
    timesteps: tuple[int, ...]
    seed: int = 0


def validation_loss(validation: Validation, method: TrainingMethod, accelerator: Accelerator) -> float:
    """The mean loss over the set, the trainable modules in eval mode and the RNG left as it was. Every
    rank scores all of it: a DDP/FSDP forward is a collective that all ranks must join, and the set is
    small."""
    modules = method.trainable_modules()
    for module in modules:
        module.eval()
    total = torch.zeros((), device=accelerator.device)
    with preserved_rng(), torch.no_grad():
        for index in range(len(validation.dataset)):
            batch = validation.dataset.collate([validation.dataset[index]] * len(validation.timesteps))
            generator = torch.Generator().manual_seed(derive_seed(validation.seed, index, "validation"))
            batch["noise"] = torch.randn(batch["latents"].shape, generator=generator)
            batch["timesteps"] = torch.tensor(validation.timesteps)
            with accelerator.autocast():
                total += method.loss(distributed.to_device(batch, accelerator.device)).detach().float()
    for module in modules:
        module.train()
    return float(total) / len(validation.dataset)
