"""APT step time against a plain DreamArtist-style loop at the same settings (model, size, batch, AdamW,
fp32, CFG 3-5), interleaved in one run, with liandan's TI step at twice the batch beside them.

    python -m bench.apt_speed --smoke                 # tiny SD1 at 64 px, one repeat: proves it runs
    python -m bench.apt_speed --model tiny --size 64 128 --record
    python -m bench.apt_speed --model sd15 --size 64 128 --repeats 5 --record   # random SD1.5-sized weights

liandan's APT step: cached latents; the positive and negative prompts in one text-encoder batch; the UNet on
twice the batch in one call. Its budget is one more UNet batch element per sample: about a TI step at batch
2B, no more. The plain loop (bench.ti_speed.diffusers_step with a negative token): the diffusers textual-
inversion example with DreamArtist's negative embedding and guided prediction, the VAE encoding every step.
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
from bench.ti_speed import LR, PROMPT, build_bundle, diffusers_step, liandan_step


class _Prompts:
    def __init__(self) -> None:
        self.images: list[object] = []  # APT looks images up for its reconstruction loss and attention maps

    def __len__(self) -> int:
        return 1

    def prompt(self, index: int, epoch: int) -> str:
        return PROMPT


def apt_step(
    bundle,
    size: int,
    batch: int,
    device: torch.device,
    mixed_precision: str = "no",
    torch_compile: bool = False,
) -> Callable[[], None]:
    from liandan.jobs import AptJob, DataSpec, TrainSpec
    from liandan.methods.apt import Apt, new_pair

    job = AptJob(
        name="benchti",
        cfg_scale="3-5",
        train=TrainSpec(mixed_precision=mixed_precision, torch_compile=torch_compile),
        data=DataSpec(width=size, height=size),
    )
    context = method_context(job, bundle, device, _Prompts())
    method = Apt(context, *new_pair(bundle, job), (Path("x.pt"), Path("x-neg.pt")))
    latent = size // bundle.vae_scale_factor
    batch_dict = {
        "latents": torch.randn(batch, 4, latent, latent, device=device),
        "prompts": [PROMPT] * batch,
    }
    return method_step(method, batch_dict, LR, device, mixed_precision)


def _sides(args, size: int) -> dict:
    device, batch = torch.device(args.device), args.batch
    compiled = {
        f"liandan apt bs{batch} compiled": lambda: apt_step(
            build_bundle(args.model), size, batch, device, torch_compile=True
        )
    }
    sides = {
        f"liandan apt bs{batch}": lambda: apt_step(build_bundle(args.model), size, batch, device),
        **(compiled if args.compile else {}),
        f"liandan ti bs{2 * batch}": lambda: liandan_step(build_bundle(args.model), size, 2 * batch, device),
        f"plain apt loop bs{batch}": lambda: diffusers_step(
            build_bundle(args.model), size, batch, device, negative="benchti-neg"
        ),
    }
    return model_work_side(
        args,
        sides,
        lambda: diffusers_step(
            build_bundle(args.model), size, batch, device, negative="benchti-neg", model_work_only=True
        ),
    )


COMPARISON = Comparison(
    "apt-step",
    "bench.apt_speed",
    _sides,
    lambda args, size: f"sd1 {args.model} {size}px bs{args.batch} fp32 AdamW, cfg 3-5",
)


def main(argv: list[str] | None = None) -> None:
    run_comparison(COMPARISON, step_benchmark_args(argv, __doc__ or ""))


if __name__ == "__main__":
    main()
