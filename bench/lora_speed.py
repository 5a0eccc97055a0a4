"""LoRA (and LyCORIS) step time against a plain diffusers + peft loop at identical settings (SD1 UNet,
rank 8, alpha 4 on the attention projections; conv rank 4, alpha 1 on the ResNet convolutions for the conv
types; AdamW, fp32), interleaved in one run.

    python -m bench.lora_speed --smoke                 # tiny SD1 at 64 px, one repeat: proves it runs
    python -m bench.lora_speed --model tiny --size 64 128 --network lora locon loha lokr dora --record
    python -m bench.lora_speed --model sd15 --size 64 128 --repeats 5 --record   # random SD1.5-sized weights

Ours: the LoRA job's step (lycoris modules on the UNet, the cond cached as the job does with frozen text
encoders, cached latents, the loop's optimizer). Theirs: the diffusers example's step (peft's adapter of the
same type — LoRA, LoHa, LoKr, LoRA with use_dora — on exactly the modules ours targets, at the same ranks;
the VAE encoding the pixels and the text encoder run every step, as `train_text_to_image_lora.py` does;
torch.optim.AdamW with its defaults).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.harness import Comparison, run_comparison, step_benchmark_args
from bench.ti_speed import PROMPT, build_bundle

LR = 1e-4
RANK, ALPHA = 8, 4.0
NETWORKS = ("lora", "locon", "loha", "lokr", "dora")


def _network(bundle, network_type: str):
    from liandan.jobs import NetworkSpec
    from liandan.models.lora_injection import LoraNetwork

    spec = NetworkSpec(type=network_type, rank=RANK, alpha=ALPHA)
    return LoraNetwork(bundle, spec, text_encoders=False)


def liandan_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    network_type: str = "lora",
) -> Callable[[], None]:
    """The job's step; a `dtype` below fp32 is the frozen model's, under autocast (mixed precision)."""
    from liandan.models.conditioning import PromptEncoder
    from liandan.train.cond_cache import CondCache
    from liandan.train.diffusion_loss import batch_loss
    from liandan.train.method import ParamGroup
    from liandan.train.optimizers import build_optimizer

    bundle.to(device, dtype)
    network = _network(bundle, network_type).to(device)
    network.apply()
    conds = CondCache(PromptEncoder(bundle, clip_skip=1), device)
    group = ParamGroup("unet", network.component_parameters("unet"))
    optimizer = build_optimizer("AdamW", [group], LR, 0.0)
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


def peft_config(bundle, network_type: str):
    """peft's adapter of `network_type` on exactly the UNet modules liandan's network targets, at its
    ranks and alphas."""
    import peft

    paths = {id(module): path for path, module in bundle.unet.named_modules()}
    ranks, alphas = {}, {}
    for lyco in _network(bundle, network_type).networks.values():
        path = paths[id(lyco.org_module[0])]
        ranks[path], alphas[path] = lyco.lora_dim, float(lyco.alpha)
    common = {"r": RANK, "target_modules": list(ranks), "rank_pattern": ranks, "alpha_pattern": alphas}
    if network_type == "loha":
        return peft.LoHaConfig(alpha=ALPHA, **common)
    if network_type == "lokr":
        return peft.LoKrConfig(alpha=ALPHA, **common)
    return peft.LoraConfig(lora_alpha=ALPHA, use_dora=network_type == "dora", **common)


def peft_step(bundle, size: int, batch: int, device: torch.device, network_type: str) -> Callable[[], None]:
    import torch.nn.functional as F
    from peft import inject_adapter_in_model

    text_encoder, unet, vae, scheduler = (
        bundle.text_encoders[0],
        bundle.unet,
        bundle.vae,
        bundle.noise_scheduler,
    )
    for module in (unet, vae, text_encoder):
        module.to(device).requires_grad_(False)
    inject_adapter_in_model(peft_config(bundle, network_type), unet)
    params = [
        p for name, p in unet.named_parameters() if any(part in name for part in ("lora_", "hada_", "lokr_"))
    ]
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


def _sides(args, size: int) -> dict:
    device = torch.device(args.device)  # each side builds its own copy: peft injects into the UNet
    sides = {}
    for network in args.network:
        sides[f"liandan {network}"] = lambda n=network: liandan_step(
            build_bundle(args.model), size, args.batch, device, network_type=n
        )
        sides[f"peft {network}"] = lambda n=network: peft_step(
            build_bundle(args.model), size, args.batch, device, n
        )
    return sides


def _settings(args, size: int) -> str:
    return f"sd1 {args.model} {size}px bs{args.batch} fp32 AdamW, {args.network[0]} rank {RANK} attention"


COMPARISON = Comparison("lora-step", "bench.lora_speed", _sides, _settings)


def main(argv: list[str] | None = None) -> None:
    def add_arguments(parser) -> None:
        parser.add_argument("--network", nargs="+", choices=NETWORKS, default=["lora"])

    args = step_benchmark_args(argv, __doc__ or "", add_arguments)
    if args.side:  # a side process: its label names the network
        run_comparison(COMPARISON, args)
        return
    for network in list(args.network):  # one comparison (one pair of sides, one row) per network type
        args.network = [network]
        run_comparison(COMPARISON, args)


if __name__ == "__main__":
    main()
