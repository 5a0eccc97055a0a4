"""One thread against all of them, per CPU training step: whether threads pay, which decides the default of
TrainSpec.cpu_threads (train/training_job.py: torch's own count, since they pay even on the tiny model).

    python -m bench.cpu_threads --smoke            # the tiny model, one repeat (CI)
    python -m bench.cpu_threads --model tiny sd15 --record

The steps are the TI, LoRA and DreamBooth benchmarks' liandan steps at 64 px, each called in turn at one
thread and at torch's default count (interleaved, so a busy machine slows both alike).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench import dreambooth_speed, lora_speed, ti_speed
from bench.harness import BenchRow, append_result, interleaved
from bench.ti_speed import build_bundle
from liandan.train.training_job import cpu_threads

CPU = torch.device("cpu")

STEPS = {
    "ti": ti_speed.liandan_step,
    "lora": lora_speed.liandan_step,
    "dreambooth": dreambooth_speed.liandan_step,
}


def at_threads(step, count: int):
    def call() -> None:
        with cpu_threads(count, CPU):
            step()

    return call


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="+", choices=("tiny", "sd15"), default=["tiny"])
    parser.add_argument("--method", nargs="+", choices=tuple(STEPS), default=list(STEPS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.method, args.repeats, args.warmup, args.record = ["tiny"], ["ti"], 1, 0, False
    threads = torch.get_num_threads()
    for model in args.model:
        for method in args.method:
            bundle = build_bundle(model)
            params = sum(p.numel() for p in bundle.unet.parameters())
            step = STEPS[method](bundle, args.size, 1, CPU)
            sides = {"1 thread": at_threads(step, 1), f"{threads} threads": at_threads(step, threads)}
            times = interleaved(sides, args.warmup, args.repeats)
            one, many = (statistics.median(t) * 1000 for t in times.values())
            line = f"1 thread {one:.0f} ms, {threads} threads {many:.0f} ms per step ({many / one:.2f}x)"
            print(f"{method} {model} ({params / 1e6:.0f}M UNet weights) {args.size}px: {line}")
            if args.record:
                settings = (
                    f"{method} sd1 {model} ({params / 1e6:.0f}M UNet weights) {args.size}px bs1 fp32 AdamW"
                )
                row = BenchRow("cpu-threads", settings, line + f" (median of {args.repeats}, interleaved)")
                append_result(
                    row, command=f"python -m bench.cpu_threads --model {model} --method {method} --record"
                )
            del bundle, step, sides


if __name__ == "__main__":
    main()
