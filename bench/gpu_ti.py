"""Textual inversion on a GPU: images/s and peak memory at 512 px for SD1.5-sized (random) weights.

    python -m bench.gpu_ti                       # CUDA, SD1.5-sized, 512 px, batch 8, bf16 frozen weights
    python -m bench.gpu_ti --batch 16 --record
    python -m bench.gpu_ti --smoke               # tiny model on whatever device there is, seconds

The step is liandan's TextualInversion loss + backward + AdamW on the vectors, with cached latents (the VAE
is off the GPU, as "move VAE to RAM" leaves it) and the frozen UNet/text encoder in bf16.
Targets from the issue (H100): >= 250 images/s, <= 3.5 GB.
"""

from __future__ import annotations

import argparse

import torch

from bench.harness import BenchRow, append_result, benchmark_args, measure
from bench.ti_speed import build_bundle, liandan_step


def main(argv: list[str] | None = None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--batch", type=int, default=8)
    extra.add_argument("--size", type=int, default=512)
    known, rest = extra.parse_known_args(argv)
    args = benchmark_args(rest, __doc__ or "")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        raise SystemExit("bench.gpu_ti needs a CUDA GPU (use --smoke to check the script on the CPU)")
    model, size, batch = ("tiny", 64, 2) if args.smoke else ("sd15", known.size, known.batch)
    precision = "bf16" if device.type == "cuda" or args.smoke else "no"
    bundle = build_bundle(model)
    bundle.vae.to("cpu")  # latents are cached: the VAE never touches the GPU during the steps
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    step = liandan_step(bundle, size, batch, device, mixed_precision=precision)
    result = measure(step, args.warmup, args.repeats)
    images_per_s = batch / result.median_s
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}: sd1 {model} {size}px batch {batch} {precision}: {images_per_s:.1f} images/s")
    print(result.summary())
    if args.record:
        settings = f"sd1 {model} {size}px bs{batch} {precision} weights, {name}"
        text = f"{images_per_s:.1f} images/s; {result.summary()}"
        command = f"python -m bench.gpu_ti --batch {batch} --size {size} --record"
        append_result(BenchRow("ti-gpu", settings, text), command=command)


if __name__ == "__main__":
    main()
