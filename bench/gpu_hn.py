"""The GPU hypernetwork benchmark: SD1.5-sized UNet at 512 px (target on an H100: >= 250 images/s).

    python -m bench.gpu_hn             # prints one line per setting; --record appends them to RESULTS.md

It runs bench.hn_speed's real step (frozen bf16 UNet, fp32 hypernetwork "1, 2, 1" on every attention width,
AdamW) at a few batch sizes, eager and compiled, and stops early if the GPU is missing.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench import hn_speed

SETTINGS = (
    ["--batch", "8"],
    ["--batch", "32"],
    ["--batch", "32", "--compile"],
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CI: the CPU smoke step when there is no GPU")
    args = parser.parse_args(argv)
    if args.smoke and not torch.cuda.is_available():
        print("gpu_hn: no CUDA device; running the CPU smoke step instead")
        hn_speed.main(["--smoke"])
        return 0
    if not torch.cuda.is_available():
        print("gpu_hn: no CUDA device; run it on a GPU machine", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    common = ["--model", "sd1", "--size", "512", "--device", "cuda", "--dtype", "bf16", "--repeats", "10"]
    for setting in SETTINGS[:1] if args.smoke else SETTINGS:
        extra = ["--repeats", "2"] if args.smoke else (["--record"] if args.record else [])
        hn_speed.main([*common, *setting, *extra])
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
