"""DreamBooth on a GPU: peak memory and images/s of a full UNet fine-tune (text encoder frozen, latents and
conds cached) for SD1.5-sized or SDXL-sized (random) weights. Written for a GPU, not yet run on one.

    python -m bench.gpu_dreambooth                                   # SD1.5 512 px bs1 bf16 AdamW8bit + ckpt
    python -m bench.gpu_dreambooth --model sdxl --size 1024          # SDXL full fine-tune at 1024 px
    python -m bench.gpu_dreambooth --batch 16 --optimizer AdamW --no-checkpointing --record   # throughput
    python -m bench.gpu_dreambooth --smoke [--model sdxl]            # tiny model on whatever device, seconds

Targets from the issue: SD1.5 512 px bs1 bf16 + 8-bit AdamW + checkpointing <= 6 GB (fused backward <= 5 GB,
see trainkit's fused_backward), SDXL 1024 px bs1 <= 12 GB, SD1.5 bs >= 16 on an H100 >= 160 images/s.
"""

from __future__ import annotations

import argparse

import torch

from bench.dreambooth_speed import liandan_step
from bench.harness import BenchRow, append_result, benchmark_args, measure
from bench.ti_speed import build_bundle


def make_bundle(model: str):
    """ "sd15", "sdxl": random weights at the released size; "tiny-sd15", "tiny-sdxl": the tiny models."""
    from liandan.models.model_spec import assemble_bundle, build_modules, standard_spec
    from liandan.models.tiny import tiny_bundle

    if model.startswith("tiny-"):
        return tiny_bundle("sd1" if model == "tiny-sd15" else "sdxl")
    if model == "sd15":
        return build_bundle(model)
    spec = standard_spec("sdxl")
    torch.manual_seed(0)
    text_encoders, unet, vae = build_modules(spec, empty=False)
    return assemble_bundle(spec, text_encoders, unet, vae, name="sdxl-random")


def main(argv: list[str] | None = None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    extra.add_argument("--batch", type=int, default=1)
    extra.add_argument("--size", type=int, default=512)
    extra.add_argument("--optimizer", default="AdamW8bit")
    extra.add_argument("--precision", choices=["bf16", "fp16", "no"], default="bf16")
    extra.add_argument("--no-checkpointing", action="store_true")
    known, rest = extra.parse_known_args(argv)
    args = benchmark_args(rest, __doc__ or "")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        raise SystemExit("bench.gpu_dreambooth needs a CUDA GPU (use --smoke to check the script on the CPU)")
    size, batch = (64, 1) if args.smoke else (known.size, known.batch)
    model = f"tiny-{known.model}" if args.smoke else known.model
    optimizer = "AdamW" if args.smoke else known.optimizer
    bundle = make_bundle(model)
    bundle.vae.to("cpu")  # latents are cached: the VAE never touches the GPU during the steps
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    checkpointing = not known.no_checkpointing
    step = liandan_step(bundle, size, batch, device, optimizer, known.precision, checkpointing)
    result = measure(step, args.warmup, args.repeats)
    images_per_s = batch / result.median_s
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    switches = f"{known.precision} {optimizer}{' ckpt' if checkpointing else ''}"
    print(f"{name}: {model} {size}px batch {batch} {switches}: {images_per_s:.1f} images/s")
    print(result.summary())
    if args.record:
        settings = f"{model} {size}px bs{batch} {switches}, {name}"
        text = f"{images_per_s:.1f} images/s; {result.summary()}"
        command = f"python -m bench.gpu_dreambooth --model {model} --batch {batch} --size {size} --record"
        append_result(BenchRow("dreambooth-gpu", settings, text), command=command)


if __name__ == "__main__":
    main()
