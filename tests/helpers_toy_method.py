"""A toy TrainingMethod and dataset for tests of the training loop (others may reuse them).

The method is a tiny conv denoiser: it sees `latent + noise` and predicts the noise. The latents are smooth
(upsampled 2x2 random fields), so a 3x3 conv can learn to separate them from the white noise: the loss falls
clearly within a few dozen steps. Noise comes from the global torch RNG (so resume must restore it) unless
`global_rng=False`, when each item carries its own noise derived from (seed, epoch, index).

`gradient_sync="prepare"` makes it a large-module method: the loop wraps the conv (DDP on several
processes) and `loss` calls the wrapper it was handed; `prepared` records what it got.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from liandan.atomic_files import atomic_path
from liandan.jobs import TrainSpec
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.train.loop import TrainResult, train
from liandan.train.method import ParamGroup, SavedArtifact

CHANNELS, SIZE = 4, 8


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, num_items: int = 8, seed: int = 0) -> None:
        self.seed, self.epoch = seed, 0
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_items, CHANNELS, 2, 2, generator=generator)
        self.latents = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear")

    def __len__(self) -> int:
        return len(self.latents)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        latent = self.latents[index]
        if rng.random() < 0.5:  # a per-(epoch, item) flip, like the real datasets' augmentation
            latent = latent.flip(-1)
        noise = torch.from_numpy(rng.standard_normal(latent.shape).astype(np.float32))
        return {"latent": latent, "noise": noise, "index": index}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "latents": torch.stack([item["latent"] for item in items]),
            "noise": torch.stack([item["noise"] for item in items]),
            "indices": [item["index"] for item in items],
        }


class ToyMethod:
    kind = "toy"

    def __init__(
        self,
        out_dir: Path,
        name: str = "toy",
        seed: int = 0,
        global_rng: bool = True,
        nan_on_loss_calls: set[int] | None = None,
        preview_ignores_artifact: bool = False,
        gradient_sync: str = "all_reduce",
    ) -> None:
        torch.manual_seed(seed)
        self.name, self.out_dir = name, out_dir
        self.net = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.gradient_sync = gradient_sync
        self.forward_net: torch.nn.Module = self.net
        self.prepared: list[torch.nn.Module] = []
        self.global_rng = global_rng
        self.nan_on_loss_calls = nan_on_loss_calls or set()
        self.preview_ignores_artifact = preview_ignores_artifact
        self.loss_calls = 0
        self.batch_sizes: list[int] = []
        self.hook_steps: list[int] = []
        self.weights_after_step: list[torch.Tensor] = []
        self.saves: list[tuple[int, bool]] = []
        self.previews: list[tuple[str, int, bool]] = []

    def parameter_groups(self) -> list[ParamGroup]:
        return [ParamGroup("net", list(self.net.parameters()))]

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def use_prepared_modules(self, modules: list[torch.nn.Module]) -> None:
        self.prepared = list(modules)
        (self.forward_net,) = modules

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        self.loss_calls += 1
        latents = batch["latents"]
        self.batch_sizes.append(len(latents))
        fixed = "timesteps" in batch or not self.global_rng  # validation batches bring their noise
        noise = batch["noise"] if fixed else torch.randn_like(latents)
        prediction = self.forward_net(latents + noise)
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        if self.loss_calls in self.nan_on_loss_calls:
            loss = loss * float("nan")
        return loss

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)

    def after_optimizer_step(self, step: int) -> None:
        self.hook_steps.append(step)
        self.weights_after_step.append(torch.cat([p.detach().reshape(-1) for p in self.net.parameters()]))

    def save(self, step: int, final: bool) -> SavedArtifact:
        self.saves.append((step, final))
        path = self.out_dir / (f"{self.name}.safetensors" if final else f"{self.name}-{step}.safetensors")
        with atomic_path(path) as tmp:
            save_file(self.trainable_state(), str(tmp), metadata={"step": str(step)})
        return SavedArtifact([path], step)

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        with safe_open(str(artifact.paths[0]), "pt") as f:
            return {"net"} if set(f.keys()) == set(self.net.state_dict()) else set()

    def preview(self, prompt: str, seed: int, enabled: bool) -> Image.Image:
        self.previews.append((prompt, seed, enabled))
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(1, CHANNELS, SIZE, SIZE, generator=generator)
        torch.randn(3)  # a preview that draws from the global RNG: the loop must shield training from it
        if enabled and not self.preview_ignores_artifact:
            with torch.no_grad():
                x = x - self.net(x)
        pixels = ((x[0, :3].clamp(-2, 2) + 2) * 63.75).to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(pixels).resize((32, 32), Image.NEAREST)


# --- one call of the loop on the toy method ---------------------------------------------------------------


def train_toy(
    tmp_path: Path,
    spec: TrainSpec,
    method: ToyMethod | None = None,
    events: list[ProgressEvent] | None = None,
    control: Control | None = None,
    dataset: ToyDataset | None = None,
    **kwargs,
) -> tuple[ToyMethod, TrainResult]:
    method = method or ToyMethod(tmp_path / "out")
    reporter = Reporter(events.append if events is not None else lambda e: None)
    result = train(
        method,
        dataset or ToyDataset(8),
        spec,
        run_dir=tmp_path / "run",
        reporter=reporter,
        control=control or Control(),
        tensorboard=False,
        **kwargs,
    )
    return method, result


def csv_losses(tmp_path: Path) -> list[float]:
    with (tmp_path / "run" / "loss.csv").open(newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)
