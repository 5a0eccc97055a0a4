"""Fixed-seed image generation over a bundle's UNet and VAE, for previews and self-tests.

No diffusers pipeline (they change across diffusers versions): a short loop over diffusers' scheduler classes
built from the bundle's noise-scheduler config, with classifier-free guidance, epsilon or v-prediction, and
SDXL's added conditions. Noise comes from one seeded CPU generator per image, so a seed gives the same
starting noise (and, numerics aside, the same image) on any device. Prompts go through `PromptEncoder`, so
previews see A1111's conditioning, CLIP skip and textual-inversion embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from liandan.errors import ConfigError
from liandan.models.conditioning import (
    Conditioning,
    EmbeddingVectors,
    PromptEncoder,
    added_cond_kwargs,
    sdxl_time_ids,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from liandan.models.bundle import ModelBundle

Sampler = Literal["euler_a", "euler", "ddim", "dpmpp_2m"]
SAMPLERS: tuple[Sampler, ...] = ("euler_a", "euler", "ddim", "dpmpp_2m")
LatentMode = Literal["sample", "mean"]
# changes the conditioning of the (positive) prompts, e.g. aesthetic gradients: (prompts, plain) -> new
ConditioningHook = Callable[[Sequence[str], Conditioning], Conditioning]
# A1111's names, for the infotext (its PNG "parameters" chunk)
A1111_SAMPLER_NAMES = {"euler_a": "Euler a", "euler": "Euler", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M"}


def _quote(value: object) -> str:
    """A1111's rule: a value holding a comma, colon or newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(
    bundle: ModelBundle,
    prompt: str,
    negative_prompt: str,
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    clip_skip: int = 1,
    extra: Mapping[str, object] | None = None,
) -> str:
    """The generation parameters as A1111 writes them into a PNG's "parameters" text, so PNG Info reads
    them and "Send to txt2img" sets them up. "RNG: CPU": our noise comes from a CPU generator."""
    from liandan.models.loading import bundle_short_hash  # hashes the checkpoint file once, on first use

    fields = {
        "Steps": steps,
        "Sampler": A1111_SAMPLER_NAMES.get(sampler, sampler),
        # our Euler samplers use A1111's own default schedule; the others follow diffusers' spacing
        "Schedule type": "Automatic" if sampler in ("euler", "euler_a") else None,
        "CFG scale": cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": bundle_short_hash(bundle),
        "Model": bundle.name,
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "RNG": "CPU",
        **(extra or {}),
    }
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    settings = ", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None)
    return f"{prompt}{negative}\n{settings}"


def make_scheduler(bundle: ModelBundle, sampler: str):
    """A fresh diffusers scheduler for `sampler`, built from the bundle's training-noise config."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    config = {**bundle.noise_scheduler.config, "prediction_type": bundle.prediction_type}
    if sampler == "euler_a":
        # "linspace": the starting noise is scaled by the first sigma, as in k-diffusion
        return EulerAncestralDiscreteScheduler.from_config(config, timestep_spacing="linspace")
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config, timestep_spacing="linspace")
    if sampler == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False)
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ConfigError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


def a1111_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas + a final 0, timesteps) of k-diffusion's default schedule, which A1111 uses for Euler and
    Euler a: `steps` times evenly spaced from the last training step to 0, each given the sigma found by
    interpolating log-sigma between the neighbouring training steps."""
    import torch

    alphas = alphas_cumprod.double()
    log_sigmas = (((1 - alphas) / alphas) ** 0.5).log().float()  # A1111 holds them in float32
    timesteps = torch.linspace(len(log_sigmas) - 1, 0, steps)
    low, high, frac = timesteps.floor().long(), timesteps.ceil().long(), timesteps.frac()
    sigmas = ((1 - frac) * log_sigmas[low] + frac * log_sigmas[high]).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps


def _set_timesteps(scheduler, sampler: str, steps: int, device: torch.device) -> None:
    scheduler.set_timesteps(steps, device=device)
    if sampler in ("euler", "euler_a"):
        # diffusers' Euler schedulers step over the `sigmas`/`timesteps` they hold: give them A1111's
        sigmas, timesteps = a1111_sigmas(scheduler.alphas_cumprod, steps)
        scheduler.sigmas, scheduler.timesteps = sigmas, timesteps.to(device)


@contextmanager
def inference(*modules: torch.nn.Module) -> Iterator[None]:
    """eval() and no_grad for the block; every submodule's own training flag is put back afterwards."""
    import torch

    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def decode_latents(bundle: ModelBundle, latents: torch.Tensor) -> list[Image.Image]:
    """UNet-space latents [B, C, h, w] to RGB images (A1111's clamp and 8-bit conversion)."""
    import torch
    from PIL import Image

    vae = bundle.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scaled = latents / bundle.latent_scaling + shift
    with inference(vae):
        pixels = vae.decode(scaled.to(device=vae.device, dtype=vae.dtype)).sample
    pixels = torch.clamp((pixels.float() + 1.0) / 2.0, 0.0, 1.0)
    arrays = (255.0 * pixels.permute(0, 2, 3, 1)).cpu().numpy().astype("uint8")
    return [Image.fromarray(array) for array in arrays]


def encode_images(
    bundle: ModelBundle,
    images: torch.Tensor | Sequence[Image.Image],
    mode: LatentMode = "sample",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images (PIL, or pixels [B, 3, H, W] in [-1, 1]) to UNet-space latents: a draw from the VAE's
    distribution (`mode="sample"`, with `generator`) or its mean. Gradients do not flow (VAE is frozen)."""
    import numpy as np
    import torch

    if mode not in ("sample", "mean"):
        raise ConfigError(f"latent mode is {mode!r}; expected 'sample' or 'mean'")
    if not isinstance(images, torch.Tensor):
        arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
        images = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0
    factor = bundle.vae_scale_factor
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % factor or images.shape[3] % factor:
        raise ConfigError(
            f"images of shape {list(images.shape)}: expected [B, 3, H, W], H and W multiples of {factor}"
        )
    vae = bundle.vae
    with inference(vae):
        dist = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
        latents = dist.sample(generator) if mode == "sample" else dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * bundle.latent_scaling


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Starting noise [B, *shape] from one CPU generator per seed, and the generators for later draws."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    noise = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
    return noise, generators


def generate_batch(
    bundle: ModelBundle,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None = None,
    *,
    steps: int,
    cfg_scale: float,
    seeds: Sequence[int],
    width: int,
    height: int,
    sampler: str = "euler_a",
    clip_skip: int = 1,
    embeddings: Mapping[str, EmbeddingVectors] | None = None,
    conditioning_hook: ConditioningHook | None = None,
) -> list[Image.Image]:
    """One image per prompt, each from its own seed; `negative_prompts` defaults to empty ones.
    `conditioning_hook` rewrites the prompts' conditioning (not the negative prompts')."""
    import torch

    negative_prompts = list(negative_prompts) if negative_prompts is not None else [""] * len(prompts)
    if not prompts or len(negative_prompts) != len(prompts) or len(seeds) != len(prompts):
        raise ConfigError(
            f"{len(prompts)} prompts, {len(negative_prompts)} negative prompts and {len(seeds)} seeds: "
            "expected one of each per image"
        )
    if steps < 1:
        raise ConfigError(f"steps is {steps}: expected at least 1")
    factor = bundle.vae_scale_factor
    if width <= 0 or height <= 0 or width % factor or height % factor:
        raise ConfigError(f"size {width}x{height}: width and height must be positive multiples of {factor}")

    unet = bundle.unet
    scheduler = make_scheduler(bundle, sampler)
    _set_timesteps(scheduler, sampler, steps, unet.device)
    guided = cfg_scale != 1.0
    with inference(unet, *bundle.text_encoders):
        texts = [*prompts, *negative_prompts] if guided else list(prompts)
        cond = PromptEncoder(bundle, clip_skip=clip_skip).encode(texts, embeddings)
        if conditioning_hook is not None:
            cond = _hook_positive(conditioning_hook, prompts, cond)
        context = cond.context.to(device=unet.device, dtype=unet.dtype)
        extra = {}
        if bundle.is_sdxl:
            pooled = cond.pooled.to(device=unet.device, dtype=unet.dtype)
            if guided and all(text == "" for text in negative_prompts):
                # A1111 zeroes an all-empty SDXL negative prompt rather than encoding ""
                context[len(prompts) :] = 0
                pooled[len(prompts) :] = 0
            time_ids = sdxl_time_ids((height, width), (0, 0), (height, width))
            extra["added_cond_kwargs"] = added_cond_kwargs(type(cond)(context, pooled), time_ids)

        shape = (unet.config.in_channels, height // factor, width // factor)
        noise, generators = initial_noise(shape, seeds)
        latents = noise.to(unet.device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = unet(model_input.to(unet.dtype), t, encoder_hidden_states=context, **extra).sample
            prediction = prediction.float()
            if guided:
                positive, negative = prediction.chunk(2)
                prediction = negative + cfg_scale * (positive - negative)
            latents = scheduler.step(prediction, t, latents, generator=generators).prev_sample
    return decode_latents(bundle, latents)


def _hook_positive(hook: ConditioningHook, prompts: Sequence[str], cond: Conditioning) -> Conditioning:
    import torch

    count = len(prompts)
    pooled = None if cond.pooled is None else cond.pooled[:count]
    positive = hook(prompts, Conditioning(cond.context[:count], pooled))
    context = torch.cat([positive.context, cond.context[count:]])
    if cond.pooled is None or positive.pooled is None:
        return Conditioning(context, cond.pooled)
    return Conditioning(context, torch.cat([positive.pooled, cond.pooled[count:]]))


def generate(
    bundle: ModelBundle,
    prompt: str,
    negative_prompt: str = "",
    *,
    steps: int,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    sampler: str = "euler_a",
    clip_skip: int = 1,
    embeddings: Mapping[str, EmbeddingVectors] | None = None,
    conditioning_hook: ConditioningHook | None = None,
    extra_infotext: Mapping[str, object] | None = None,
) -> Image.Image:
    """One fixed-seed image of `prompt`; its `info["parameters"]` holds A1111's infotext for it, with
    `extra_infotext` fields appended (a hook's settings, as A1111's extra_generation_params)."""
    image = generate_batch(
        bundle,
        [prompt],
        [negative_prompt],
        steps=steps,
        cfg_scale=cfg_scale,
        seeds=[seed],
        width=width,
        height=height,
        sampler=sampler,
        clip_skip=clip_skip,
        embeddings=embeddings,
        conditioning_hook=conditioning_hook,
    )[0]
    image.info["parameters"] = infotext(
        bundle, prompt, negative_prompt, steps=steps, sampler=sampler, cfg_scale=cfg_scale, seed=seed,
        width=width, height=height, clip_skip=clip_skip, extra=extra_infotext,
    )  # fmt: skip
    return image
