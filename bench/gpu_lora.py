"""The GPU LoRA benchmark (ready; needs a CUDA device): SD1.5-sized LoRA at 512 px (target on an H100:
>= 250 images/s) and SDXL-sized LoRA at 1024 px, batch 1 (target: <= 8 GB peak).

    python -m bench.gpu_lora            # prints one line per setting; --record appends them to RESULTS.md

It runs bench.lora_speed's real step (frozen bf16 model with random weights of the released sizes, fp32
LoRA rank 8 on the attention projections, AdamW, the cond cached as the job does) and reports images/s and
the CUDA peak; the SDXL run turns the UNet's gradient checkpointing on, as a user on an 8 GB card would.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench import lora_speed
from bench.harness import BenchRow, append_result, measure

SD15 = ("sd1", 512, (8, 32))
SDXL = ("sdxl", 1024, (1,))


def random_bundle(family: str):
    from liandan.models.model_spec import assemble_bundle, build_modules, standard_spec

    spec = standard_spec(family)
    torch.manual_seed(0)
    text_encoders, unet, vae = build_modules(spec, empty=False)
    return assemble_bundle(spec, text_encoders, unet, vae, name=f"{family}-random")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="CI: the CPU smoke step when there is no GPU")
    args = parser.parse_args(argv)
    if args.smoke and not torch.cuda.is_available():
        print("gpu_lora: no CUDA device; running the CPU smoke step instead")
        lora_speed.main(["--smoke"])
        return 0
    if not torch.cuda.is_available():
        print("gpu_lora: no CUDA device; run it on a GPU machine", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    if args.smoke:
        args.repeats, args.record = 2, False
    for family, size, batches in (SD15, SDXL):
        bundle = random_bundle(family)
        if family == "sdxl":
            bundle.unet.enable_gradient_checkpointing()
            bundle.unet.train()  # diffusers 0.31 checkpoints blocks in training mode only
        for batch in batches:
            torch.cuda.reset_peak_memory_stats()
            step = lora_speed.liandan_step(bundle, size, batch, device, torch.bfloat16)
            result = measure(step, 2, args.repeats)
            peak = torch.cuda.max_memory_allocated() / 2**30
            rate, ms = batch / result.median_s, result.median_s * 1000
            line = f"{rate:.1f} images/s, {ms:.0f} ms/step, peak {peak:.2f} GiB"
            print(f"lora {family} {size}px bs{batch}: {line}")
            if args.record:
                settings = f"{family} released size {size}px bs{batch} bf16 cuda AdamW, rank 8 attention"
                append_result(
                    BenchRow("gpu-lora-step", settings, line), command="python -m bench.gpu_lora --record"
                )
        del bundle
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
