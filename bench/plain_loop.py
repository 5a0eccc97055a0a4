"""The per-step loss of diffusers' example training scripts, which the step benchmarks' plain loops share
(train_dreambooth.py, train_text_to_image_lora.py, and the hypernetwork loop written the same way)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.harness import training_step
from bench.ti_speed import PROMPT


def example_script_loss(
    bundle, size: int, batch: int, device: torch.device, encode_once: bool = False
) -> Callable[[], torch.Tensor]:
    """Every step the frozen VAE encodes the pixels and the frozen text encoder the prompt (no gradients),
    then noise, timesteps and the UNet's prediction against the noise (MSE). The UNet is the caller's to
    freeze, adapt or train. With `encode_once` the two encodes happen once, here, not every step."""
    import torch.nn.functional as F

    text_encoder, unet, vae, scheduler = (
        bundle.text_encoders[0],
        bundle.unet,
        bundle.vae,
        bundle.noise_scheduler,
    )
    for module in (vae, text_encoder):
        module.to(device).requires_grad_(False)
    unet.to(device)
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    ids = bundle.tokenizers[0]([PROMPT] * batch, padding="max_length", max_length=77, return_tensors="pt")
    ids = ids.input_ids.to(device)

    def encode() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor, text_encoder(ids)[0]

    encoded = encode() if encode_once else None

    def loss() -> torch.Tensor:
        latents, context = encoded or encode()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        return F.mse_loss(unet(noisy, timesteps, context).sample.float(), noise.float())

    return loss


def example_script_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    model_work_only: bool,
) -> Callable[[], None]:
    """A training step of `example_script_loss`; `model_work_only` (harness.model_work_side): the encodes
    done once and no optimizer step."""
    loss = example_script_loss(bundle, size, batch, device, encode_once=model_work_only)
    return training_step(loss, optimizer, step_optimizer=not model_work_only)
