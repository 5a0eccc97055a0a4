"""DreamBooth step time: liandan's method against a plain diffusers DreamBooth loop at identical settings.

    python -m bench.dreambooth_speed --smoke            # tiny SD1 at 64 px, one repeat: proves it runs
    python -m bench.dreambooth_speed --model tiny --size 64 128 --record
    python -m bench.dreambooth_speed --model sd15 --size 64 --separate --repeats 3 --record  # SD1.5-sized
    python -m bench.dreambooth_speed --fused-backward ...   # also ours with the optimizer inside backward
    python -m bench.dreambooth_speed --device cuda --model sd15 --size 512     # see bench/gpu.py

Both sides do one optimizer step of the whole UNet (batch of B, one instance prompt, AdamW, fp32, text
encoder frozen). liandan: the latents come from the latent cache and the conds from the cond cache
(DreamBoothMethod.loss), the UNet in channels_last, the loop's optimizer (torch's fused AdamW). Baseline, as
diffusers' examples/dreambooth train_dreambooth.py does by default: the VAE encodes the pixels and the text
encoder the prompt every step, torch.optim.AdamW with its defaults. Two SD1.5-sized UNets with their Adam
state do not fit in 24 GB together: --separate times each side in a process of its own.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

import torch

from bench.harness import (
    Comparison,
    SideFactory,
    StepBuilder,
    fresh_sides,
    method_context,
    run_comparison,
    step_benchmark_args,
    training_step,
)
from bench.plain_loop import example_script_step
from bench.ti_speed import build_bundle

PROMPT = "a photo of sks dog"
LR = 2e-6


def liandan_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    optimizer_name: str = "AdamW",
    mixed_precision: str = "no",
    gradient_checkpointing: bool = False,
    fused_backward: bool = False,
    torch_compile: bool = False,
) -> Callable[[], None]:
    """One DreamBooth step as the loop runs it: the method's loss under autocast, backward, the loop's
    optimizer (`optimizer_name` from train/optimizers.py, or per tensor inside backward when
    `fused_backward`)."""
    from liandan.jobs import ConceptSpec, DataSpec, DreamBoothJob, PreviewSpec, TrainSpec
    from liandan.methods.dreambooth import DreamBoothMethod
    from liandan.train.fused_backward import FusedOptimizer
    from liandan.train.optimizers import build_optimizer

    concept = ConceptSpec(instance_folder=Path("dog"), instance_prompt=PROMPT)
    train = TrainSpec(
        move_unused_to_cpu=False,
        mixed_precision=mixed_precision,
        optimizer=optimizer_name,
        fused_backward=fused_backward,
        torch_compile=torch_compile,
    )
    job = DreamBoothJob(
        name="benchdb",
        concepts=(concept,),
        train=train,
        data=DataSpec(width=size, height=size),
        preview=PreviewSpec(self_test=False),
    )
    context = method_context(job, bundle, device)
    method = DreamBoothMethod(context, Path("benchdb.safetensors"))
    if fused_backward:
        optimizer = FusedOptimizer(optimizer_name, method.parameter_groups(), 0.0, print)
        for group in optimizer.param_groups:
            group["lr"] = LR  # the loop's lr schedule sets it each step
    else:
        optimizer = build_optimizer(optimizer_name, method.parameter_groups(), LR, 0.0)
    latent = size // bundle.vae_scale_factor
    cached = torch.randn(batch, 4, latent, latent, device=device)  # what the latent cache hands over
    batch_dict = {"latents": cached, "prompts": [PROMPT] * batch, "loss_weight": None}
    if bundle.is_sdxl:  # the size ids the dataset records per image: uncropped, at the training size
        sizes = torch.tensor([[size, size]] * batch)
        batch_dict |= {"original_size": sizes, "crop_top_left": torch.zeros_like(sizes), "target_size": sizes}
    bundle.unet.train()
    if gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)

    def loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return method.loss(batch_dict)

    return training_step(loss, optimizer)


def diffusers_step(
    bundle, size: int, batch: int, device: torch.device, model_work_only: bool = False
) -> Callable[[], None]:
    bundle.unet.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(bundle.unet.parameters(), lr=LR)
    return example_script_step(bundle, size, batch, device, optimizer, model_work_only)


def _sides(args: argparse.Namespace, size: int) -> dict[str, SideFactory]:
    """Ours (and, with --fused-backward, ours stepping each tensor inside backward), then the plain loop."""
    builders: dict[str, StepBuilder] = {"liandan": liandan_step}
    if args.fused_backward:
        builders["liandan fused backward"] = functools.partial(liandan_step, fused_backward=True)
    builders["diffusers loop"] = diffusers_step
    return fresh_sides(builders, build_bundle)(args, size)


COMPARISON = Comparison(
    "dreambooth-step",
    "bench.dreambooth_speed",
    _sides,
    lambda args, size: f"sd1 {args.model} {size}px bs{args.batch} fp32 AdamW, text encoder frozen",
)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fused-backward", action="store_true", help="also time ours with train.fused_backward (same AdamW)"
    )


def main(argv: list[str] | None = None) -> None:
    run_comparison(COMPARISON, step_benchmark_args(argv, __doc__ or "", _arguments))


if __name__ == "__main__":
    main()
