"""Hypernetwork training step time: the method's real step (K/V hooks on a frozen UNet, the shared denoising
loss, backward through the UNet into the hypernetwork, AdamW) on cached latents and cached conds, as the
method trains after its first epoch.

    python -m bench.hn_speed --smoke                      # tiny SD1 at 64 px, seconds (CI)
    python -m bench.hn_speed --model sd1 --size 128       # SD1.5-sized UNet (random weights) on the CPU
    python -m bench.hn_speed --model sd1 --size 512 --device cuda --batch 16 --dtype bf16 --record

Images/s = batch / median step time. File size and parameter count per layer structure:
bench/hypernetwork_sizes.py.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Callable

import torch

from bench.harness import BenchRow, append_result, measure
from liandan.jobs import HypernetworkJob
from liandan.methods.hypernetwork import build_hypernetwork, model_attention_widths
from liandan.models.attention_hooks import install_kv_transforms
from liandan.train.diffusion_loss import diffusion_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _bundle(model: str, device: torch.device, dtype: torch.dtype) -> types.SimpleNamespace:
    """The parts of a bundle the step uses: UNet (frozen) and noise scheduler; tiny or SD1.5-sized."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from liandan.models.model_spec import standard_spec
    from liandan.models.tiny import tiny_bundle, tiny_spec

    if model == "tiny":
        bundle = tiny_bundle("sd1")
        unet, scheduler_config = bundle.unet, tiny_spec("sd1").scheduler
    else:
        spec = standard_spec("sd1")
        unet, scheduler_config = UNet2DConditionModel(**spec.unet), spec.scheduler
    unet.requires_grad_(False).eval().to(device, dtype)
    scheduler = DDPMScheduler(**scheduler_config)
    return types.SimpleNamespace(unet=unet, noise_scheduler=scheduler, prediction_type="epsilon")


def make_step(
    model: str, size: int, batch: int, device: str, dtype: str, layer_structure: str, compile_unet: bool
) -> tuple[Callable[[], None], int]:
    """One optimizer step as a callable, and the hypernetwork's parameter count."""
    torch.manual_seed(0)
    dev = torch.device(device)
    bundle = _bundle(model, dev, DTYPES[dtype])
    widths = model_attention_widths(bundle)
    job = HypernetworkJob(name="bench", layer_structure=layer_structure)
    hypernetwork = build_hypernetwork(job, widths).to(dev).train()
    install_kv_transforms(bundle.unet, [hypernetwork])
    if compile_unet:
        bundle.unet = torch.compile(bundle.unet)
    optimizer = torch.optim.AdamW(hypernetwork.parameters(), lr=5e-6)
    context_width = bundle.unet.config.cross_attention_dim
    latents = torch.randn(batch, 4, size // 8, size // 8, device=dev)
    context = torch.randn(batch, 77, context_width, device=dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
            loss = diffusion_loss(bundle, latents, context)  # type: ignore[arg-type]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in hypernetwork.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, 64 px, one measured step")
    parser.add_argument("--model", choices=("tiny", "sd1"), default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="UNet weights and autocast")
    parser.add_argument("--layer-structure", default="1, 2, 1")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1 if args.smoke else torch.get_num_threads())
    if args.smoke:
        args.model, args.size, args.batch, args.repeats = "tiny", 64, 1, 1
    step, params = make_step(
        args.model, args.size, args.batch, args.device, args.dtype, args.layer_structure, args.compile
    )
    result = measure(step, warmup=1 if args.smoke else 3, repeats=args.repeats)
    images_per_s = args.batch / result.median_s
    settings = (
        f"{args.model} {args.size}px bs{args.batch} {args.dtype} {args.device}"
        f"{' compiled' if args.compile else ''}, structure {args.layer_structure!r}, {params:,} params"
    )
    summary = f"{result.summary()}; {images_per_s:.2f} images/s"
    print(f"hypernetwork step: {settings}: {summary}")
    if args.record and not args.smoke:
        command = "python -m bench.hn_speed " + " ".join(argv if argv is not None else sys.argv[1:])
        append_result(BenchRow("hn-step", settings, summary), command=command)


if __name__ == "__main__":
    main()
