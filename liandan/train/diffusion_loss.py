"""The denoising loss every Stable Diffusion method shares: noise the latents at a random timestep, predict
with the UNet, compare with the target the model was trained for (epsilon or v)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from liandan.jobs import TrainSpec
    from liandan.models.bundle import ModelBundle


def frozen_weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of the frozen UNet and text encoders: the mixed-precision dtype (autocast computes in it
    anyway), else float32, also for a checkpoint stored in fp16, which would otherwise run in fp16 without
    mixed precision's loss scaling."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def diffusion_loss(
    bundle: ModelBundle,
    latents: torch.Tensor,
    context: torch.Tensor,
    *,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    loss_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss over the batch. `loss_weight` ([B,1,h,w], e.g. from PNG alpha) weights each latent pixel,
    normalised per sample so a mostly transparent image does not simply get a smaller loss. `noise` and
    `timesteps` given (the validation set's fixed ones) replace the random draws."""
    scheduler = bundle.noise_scheduler
    unet = bundle.unet
    dtype = next(unet.parameters()).dtype
    latents = latents.to(device=unet.device, dtype=torch.float32)
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device="cpu")
    if timesteps is None:
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device="cpu"
        )
    noise, timesteps = noise.to(latents.device, latents.dtype), timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if bundle.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise

    kwargs: dict[str, Any] = {}
    if added_cond_kwargs is not None:
        kwargs["added_cond_kwargs"] = {k: v.to(unet.device, dtype) for k, v in added_cond_kwargs.items()}
    prediction = unet(noisy.to(dtype), timesteps, context.to(unet.device, dtype), **kwargs).sample

    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if loss_weight is None:
        return error.mean()
    weight = loss_weight.to(error.device, error.dtype)
    per_sample = (error * weight).sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * error.shape[1]).clamp_min(
        1e-8
    )
    return per_sample.mean()


def set_unet_gradient_checkpointing(unet: torch.nn.Module, enabled: bool) -> None:
    """Recompute the frozen UNet's block activations in the backward pass (TrainSpec.gradient_checkpointing):
    for TI and hypernetworks the big activations are the UNet's, not the trainable module's.

    diffusers 0.31 checkpoints a block only while that block is in training mode, and a frozen UNet is in
    eval mode; so the blocks with a checkpointing switch (and only they: dropout and every other layer stay
    in eval) get `training = True`. Their own forward reads the flag for nothing else, so results do not
    change. Newer diffusers checkpoint whenever gradients are on. Off: the switch is cleared, so a bundle
    reused by a later job does not keep it."""
    if not enabled:
        unet.disable_gradient_checkpointing()
        return
    unet.enable_gradient_checkpointing()
    for module in unet.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.training = True


def freeze_for_training(bundle: ModelBundle, device: torch.device, train: TrainSpec) -> None:
    """The model a TI/hypernetwork-style method trains through: no gradients and eval mode (no dropout)
    everywhere; text encoders and UNet on the training device in the mixed-precision dtype; the UNet in
    channels_last, which oneDNN and tensor-core convolutions run faster (about 10% per CPU step at 128 px on
    an SD1.5-sized UNet); its gradient checkpointing as the job asks. The VAE stays where it is."""
    dtype = frozen_weight_dtype(train.mixed_precision)
    for module in [*bundle.text_encoders, bundle.unet, bundle.vae]:
        module.requires_grad_(False)
        module.eval()
    for module in [*bundle.text_encoders, bundle.unet]:
        module.to(device, dtype)
    bundle.unet.to(memory_format=torch.channels_last)
    set_unet_gradient_checkpointing(bundle.unet, train.gradient_checkpointing)
