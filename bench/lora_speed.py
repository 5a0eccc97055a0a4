"""LoRA (and LyCORIS) step time against a plain diffusers + peft loop at identical settings (SD1 UNet,
rank 8, alpha 4 on the attention projections; conv rank 4, alpha 1 on the ResNet convolutions for the conv
types; AdamW, fp32), interleaved in one run.

    python -m bench.lora_speed --smoke                 # tiny SD1 at 64 px, one repeat: proves it runs
    python -m bench.lora_speed --model tiny --size 64 128 --network lora locon loha lokr dora --record
    python -m bench.lora_speed --model sd15 --size 64 128 --repeats 5 --record   # random SD1.5-sized weights
    python -m bench.lora_speed --model tiny --size 64 --compile --record   # also ours with torch_compile

Ours: the LoRA job's step (lycoris modules on the UNet, the cond cached as the job does with frozen text
encoders, cached latents, the loop's optimizer). Theirs: the diffusers example's step (peft's adapter of the
same type — LoRA, LoHa, LoKr, LoRA with use_dora — on exactly the modules ours targets, at the same ranks;
the VAE encoding the pixels and the text encoder run every step, as `train_text_to_image_lora.py` does;
torch.optim.AdamW with its defaults).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bench.harness import (
    Comparison,
    method_context,
    method_step,
    model_work_side,
    run_comparison,
    step_benchmark_args,
)
from bench.plain_loop import example_script_step
from bench.ti_speed import PROMPT, build_bundle

LR = 1e-4
RANK, ALPHA = 8, 4.0
NETWORKS = ("lora", "locon", "loha", "lokr", "dora")


def _network_spec(network_type: str):
    from liandan.jobs import NetworkSpec

    return NetworkSpec(type=network_type, rank=RANK, alpha=ALPHA)  # its default conv rank and alpha


def _network(bundle, network_type: str):
    from liandan.models.lora_injection import LoraNetwork

    return LoraNetwork(bundle, _network_spec(network_type), text_encoders=False)


def liandan_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    mixed_precision: str = "no",
    network_type: str = "lora",
    torch_compile: bool = False,
) -> Callable[[], None]:
    """The job's step (LoraMethod.loss under the loop's autocast, the loop's optimizer); `mixed_precision`
    as TrainSpec has it (the frozen model in that dtype)."""
    from liandan.jobs import DataSpec, LoraJob, PreviewSpec, TrainSpec
    from liandan.methods.lora import LoraMethod

    job = LoraJob(
        name="benchlora",
        network=_network_spec(network_type),
        train=TrainSpec(
            mixed_precision=mixed_precision, move_unused_to_cpu=False, torch_compile=torch_compile
        ),
        data=DataSpec(folder=Path("images"), width=size, height=size),  # never read: the bench's own batch
        preview=PreviewSpec(self_test=False),
    )
    context = method_context(job, bundle, device, say=lambda message: None)
    method = LoraMethod(context)
    latent = size // bundle.vae_scale_factor
    batch_dict = {
        "latents": torch.randn(batch, 4, latent, latent, device=device),
        "prompts": [PROMPT] * batch,
        "loss_weight": None,
    }
    if bundle.is_sdxl:  # SDXL's size conditioning, as the dataset records it per image
        sizes = torch.tensor([[size, size]] * batch, device=device)
        batch_dict.update(original_size=sizes, crop_top_left=torch.zeros_like(sizes), target_size=sizes)
    return method_step(method, batch_dict, LR, device, mixed_precision)


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


def peft_step(
    bundle, size: int, batch: int, device: torch.device, network_type: str, model_work_only: bool = False
) -> Callable[[], None]:
    from peft import inject_adapter_in_model

    unet = bundle.unet.requires_grad_(False)
    inject_adapter_in_model(peft_config(bundle, network_type), unet)
    params = [
        p for name, p in unet.named_parameters() if any(part in name for part in ("lora_", "hada_", "lokr_"))
    ]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=LR)
    return example_script_step(bundle, size, batch, device, optimizer, model_work_only)


def _sides(args, size: int) -> dict:
    device = torch.device(args.device)  # each side builds its own copy: peft injects into the UNet
    sides = {}
    for network in args.network:
        sides[f"liandan {network}"] = lambda n=network: liandan_step(
            build_bundle(args.model), size, args.batch, device, network_type=n
        )
        if args.compile:
            sides[f"liandan {network} compiled"] = lambda n=network: liandan_step(
                build_bundle(args.model), size, args.batch, device, network_type=n, torch_compile=True
            )
        sides[f"peft {network}"] = lambda n=network: peft_step(
            build_bundle(args.model), size, args.batch, device, n
        )
    last = args.network[-1]  # the plain loop the ratios are taken against
    return model_work_side(
        args,
        sides,
        lambda: peft_step(build_bundle(args.model), size, args.batch, device, last, model_work_only=True),
    )


def _settings(args, size: int) -> str:
    from liandan.models.lora_injection import CONV_TYPES

    network = args.network[0]
    convs = f", conv rank {_network_spec(network).conv_rank}" if network in CONV_TYPES else ""
    return f"sd1 {args.model} {size}px bs{args.batch} fp32 AdamW, {network} rank {RANK} attention{convs}"


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
