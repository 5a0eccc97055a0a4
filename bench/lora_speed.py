"""LoRA step time against a plain diffusers + peft LoRA loop at identical settings (SD1 UNet, rank 8,
alpha 4, the attention projections to_q/to_k/to_v/to_out.0, AdamW, fp32), side by side in one run.

    python -m bench.lora_speed --smoke                 # tiny SD1 at 64 px, one repeat: proves it runs
    python -m bench.lora_speed --model tiny --size 64 128 --record
    python -m bench.lora_speed --model sd15 --size 64 --repeats 3 --record   # random SD1.5-sized weights

Ours: the LoRA job's step (lycoris modules on the UNet, the cond cached as the job does with frozen text
encoders, cached latents). Theirs: the diffusers example's step (peft's LoRA layers injected into the UNet,
the VAE encoding the pixels and the text encoder run every step, as `train_text_to_image_lora.py` does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.harness import BenchRow, append_result, measure, step_benchmark_args
from bench.ti_speed import PROMPT, build_bundle

LR = 1e-4
RANK, ALPHA = 8, 4.0
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def liandan_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    network_type: str = "lora",
) -> Callable[[], None]:
    """The job's step; a `dtype` below fp32 is the frozen model's, under autocast (mixed precision);
    `network_type` is NetworkSpec.type (lora, locon, loha, lokr, dora)."""
    from liandan.jobs import NetworkSpec
    from liandan.models.conditioning import PromptEncoder
    from liandan.models.lora_injection import LoraNetwork
    from liandan.train.cond_cache import CondCache
    from liandan.train.diffusion_loss import batch_loss

    bundle.to(device, dtype)
    network = LoraNetwork(
        bundle, NetworkSpec(type=network_type, rank=RANK, alpha=ALPHA), text_encoders=False
    ).to(device)
    network.apply()
    conds = CondCache(PromptEncoder(bundle, clip_skip=1), device)
    optimizer = torch.optim.AdamW(network.component_parameters("unet"), lr=LR)
    latent = size // bundle.vae_scale_factor
    batch_dict = {
        "latents": torch.randn(batch, 4, latent, latent, device=device),
        "prompts": [PROMPT] * batch,
        "loss_weight": None,
    }
    if bundle.is_sdxl:  # SDXL's size conditioning, as the dataset records it per image
        sizes = torch.tensor([[size, size]] * batch, device=device)
        batch_dict.update(original_size=sizes, crop_top_left=torch.zeros_like(sizes), target_size=sizes)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with autocast:
            context, pooled = conds(batch_dict["prompts"])
            loss = batch_loss(bundle, batch_dict, context, pooled)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peft_step(bundle, size: int, batch: int, device: torch.device) -> Callable[[], None]:
    import torch.nn.functional as F
    from peft import LoraConfig, inject_adapter_in_model

    text_encoder, unet, vae, scheduler = (
        bundle.text_encoders[0],
        bundle.unet,
        bundle.vae,
        bundle.noise_scheduler,
    )
    for module in (unet, vae, text_encoder):
        module.to(device).requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS), unet)
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=LR)
    pixels = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    ids = bundle.tokenizers[0]([PROMPT] * batch, padding="max_length", max_length=77, return_tensors="pt")
    ids = ids.input_ids.to(device)

    def step() -> None:
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            context = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        loss = F.mse_loss(unet(noisy, t, context).sample.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    args = step_benchmark_args(argv, __doc__ or "")
    model, batch, device = args.model, args.batch, torch.device(args.device)
    for size in args.sizes:
        ours = measure(liandan_step(build_bundle(model), size, batch, device), args.warmup, args.repeats)
        theirs = measure(peft_step(build_bundle(model), size, batch, device), args.warmup, args.repeats)
        ratio = ours.median_s / theirs.median_s
        print(f"liandan {model} {size}px: {ours.summary()}")
        print(f"peft    {model} {size}px: {theirs.summary()}")
        print(f"liandan / diffusers+peft at {size}px: {ratio:.2f}x")
        if args.record:
            settings = f"sd1 {model} {size}px bs{batch} fp32 {device.type} AdamW, rank {RANK} attention"
            result_text = (f"liandan {ours.median_s * 1000:.0f} ms, diffusers+peft loop "
                           f"{theirs.median_s * 1000:.0f} ms per step ({ratio:.2f}x)")  # fmt: skip
            command = f"python -m bench.lora_speed --model {model} --size {size} --batch {batch} --record"
            append_result(BenchRow("lora-step", settings, result_text), command=command)


if __name__ == "__main__":
    main()
