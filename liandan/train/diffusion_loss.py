"""What the loss of every Stable Diffusion method shares: SDXL's added conditioning from the batch, the frozen
model in the mixed-precision dtype, and the denoising loss: noise the latents at a random timestep, predict
(with the UNet, or a method's own `predict`), compare with the target the model was trained for (epsilon or
v).

The job's loss options (TrainSpec, passed as `train`): `noise_offset` adds `offset x randn(b, c, 1, 1)` to
the drawn noise (kohya's: the model learns to shift a whole channel, so images can get darker or brighter
than average); `min_snr_gamma` weights each sample by min(SNR, gamma) / SNR for epsilon and
min(SNR, gamma) / (SNR + 1) for v-prediction (Hang et al., "Efficient Diffusion Training via Min-SNR
Weighting"), so the easy low-noise timesteps do not dominate."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from liandan.jobs import TrainSpec
    from liandan.models.bundle import ModelBundle
    from liandan.models.conditioning import Conditioning

# (noisy latents, timesteps, context, SDXL added conditioning or None) -> the model's prediction; all on the
# UNet's device and dtype. A method with its own prediction (APT's guided one) passes it to diffusion_loss.
Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "dict[str, torch.Tensor] | None"], torch.Tensor]


def batch_added_conditioning(
    bundle: ModelBundle, batch: Mapping[str, Any], cond: Conditioning
) -> dict[str, torch.Tensor] | None:
    """SDXL's added conditioning of a dataset batch (pooled text embeddings, and the size ids the dataset
    recorded per image); None for SD1/SD2, whose UNet takes none."""
    from liandan.models.conditioning import added_cond_kwargs

    if not bundle.is_sdxl:
        return None
    sizes = [batch["original_size"], batch["crop_top_left"], batch["target_size"]]
    return added_cond_kwargs(cond, torch.cat(sizes, dim=1).float())


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
    predict: Predict | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    train: TrainSpec | None = None,
) -> torch.Tensor:
    """Mean loss over the batch. `loss_weight` ([B,1,h,w], e.g. from PNG alpha) weights each latent pixel,
    normalised per sample so a mostly transparent image does not simply get a smaller loss. `predict`
    replaces the plain UNet call (same inputs, same target). `noise` and `timesteps` given (the validation
    set's fixed ones) replace the random draws; given noise gets no offset. `train` brings the job's loss
    options (see the module docstring); None: none."""
    scheduler = bundle.noise_scheduler
    unet = bundle.unet
    dtype = next(unet.parameters()).dtype
    latents = latents.to(device=unet.device, dtype=torch.float32)
    drawn = noise is None
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device="cpu")
    if timesteps is None:
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device="cpu"
        )
    if drawn and train is not None and train.noise_offset > 0:
        offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device="cpu")
        noise = noise + train.noise_offset * offset
    noise, timesteps = noise.to(latents.device, latents.dtype), timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if bundle.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise

    added = None
    if added_cond_kwargs is not None:
        added = {k: v.to(unet.device, dtype) for k, v in added_cond_kwargs.items()}
    prediction = (predict or unet_prediction(unet))(
        noisy.to(dtype), timesteps, context.to(unet.device, dtype), added
    )

    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    gamma = train.min_snr_gamma if train is not None else 0.0
    if loss_weight is None and gamma == 0:
        return error.mean()
    if loss_weight is None:
        per_sample = error.mean(dim=(1, 2, 3))
    else:
        weight = loss_weight.to(error.device, error.dtype)
        pixels = (weight.sum(dim=(1, 2, 3)) * error.shape[1]).clamp_min(1e-8)
        per_sample = (error * weight).sum(dim=(1, 2, 3)) / pixels
    if gamma > 0:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, gamma, bundle.prediction_type)
    return per_sample.mean()


def min_snr_weights(
    scheduler: Any, timesteps: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Each timestep's min-SNR-gamma loss weight, SNR = alpha_bar / (1 - alpha_bar). The epsilon loss is
    SNR times the loss on the clean latents and the v loss SNR + 1 times it; both become min(SNR, gamma)
    times it. At SNR 0 (a zero-terminal-SNR schedule's last step) the epsilon weight is its limit, 1."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return torch.where(snr > 0, clipped / snr.clamp_min(1e-12), torch.ones_like(snr))


def batch_loss(
    bundle: ModelBundle,
    batch: Mapping[str, Any],
    context: torch.Tensor,
    pooled: torch.Tensor | None,
    predict: Predict | None = None,
    train: TrainSpec | None = None,
) -> torch.Tensor:
    """`diffusion_loss` of a dataset batch conditioned on (context, pooled): its latents, its loss weight,
    SDXL's added conditioning from its size ids, and the fixed noise and timesteps a validation batch has."""
    from liandan.models.conditioning import Conditioning

    return diffusion_loss(
        bundle,
        batch["latents"],
        context,
        added_cond_kwargs=batch_added_conditioning(bundle, batch, Conditioning(context, pooled)),
        loss_weight=batch["loss_weight"],
        predict=predict,
        noise=batch.get("noise"),
        timesteps=batch.get("timesteps"),
        train=train,
    )


def unet_prediction(unet: torch.nn.Module) -> Predict:
    """The plain prediction of `unet` (the bundle's, or its wrapper for several processes)."""

    def predict(
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        kwargs = {} if added is None else {"added_cond_kwargs": added}
        return unet(noisy, timesteps, context, **kwargs).sample

    return predict


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


def set_unet_compiled(unet: torch.nn.Module, enabled: bool) -> None:
    """Run the UNet through torch.compile (TrainSpec.torch_compile), in place: the module, its parameters
    and state_dict names stay the same, so hooks, saving and the host's references are untouched. The
    first steps (and each new shape or mode, a preview's batch) compile for minutes on a CPU and tens of
    seconds on a GPU; then a step takes about 0.7x as long on the CPU (bench/RESULTS.md). Static shapes:
    each bucket size and preview batch gets its own graph (Dynamo falls back to eager after its cache
    limit), because inductor 2.14 fails to compile the UNet with symbolic sizes at the second shape. Off:
    the eager forward comes back, so a bundle reused by a later job does not keep it."""
    if enabled:
        unet.compile(dynamic=False)
    else:
        unet._compiled_call_impl = None  # what nn.Module.compile() sets; None is the eager call


def compile_warning() -> str | None:
    """What to tell a user who turns torch_compile on with a torch whose compiled UNet trains on wrong
    gradients; None where it is sound."""
    if torch.__version__ >= "2.14":
        return None
    return (  # measured on torch 2.13 (diffusers 0.31 and 0.42 alike); torch 2.14.1 agrees with eager to 4e-6
        f"torch_compile with torch {torch.__version__}: its compiled UNet's gradient at a second shape "
        "(a bucket or preview size) was measured 17% off the eager one; use torch >= 2.14 to compile, "
        "or train eager"
    )


def freeze_for_training(bundle: ModelBundle, device: torch.device, train: TrainSpec) -> None:
    """The model a TI/hypernetwork-style method trains through: no gradients and eval mode (no dropout)
    everywhere; text encoders and UNet on the training device in the mixed-precision dtype; the UNet in
    channels_last, which oneDNN and tensor-core convolutions run faster (about 10% per CPU step at 128 px on
    an SD1.5-sized UNet); its gradient checkpointing and compilation as the job asks. The VAE stays where it
    is."""
    dtype = frozen_weight_dtype(train.mixed_precision)
    for module in [*bundle.text_encoders, bundle.unet, bundle.vae]:
        module.requires_grad_(False)
        module.eval()
    for module in [*bundle.text_encoders, bundle.unet]:
        module.to(device, dtype)
    bundle.unet.to(memory_format=torch.channels_last)
    set_unet_gradient_checkpointing(bundle.unet, train.gradient_checkpointing)
    set_unet_compiled(bundle.unet, train.torch_compile)
