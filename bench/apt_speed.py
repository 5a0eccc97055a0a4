"""APT step time against textual inversion at the same settings (model, size, batch, AdamW, fp32).

    python -m bench.apt_speed --smoke                 # tiny SD1 at 64 px, one repeat: proves it runs
    python -m bench.apt_speed --model tiny --size 64 128 --record
    python -m bench.apt_speed --model sd15 --size 64 --repeats 3 --record   # random SD1.5-sized weights

Both sides do one optimizer step on cached latents with one prompt holding the embedding's name. APT also
encodes its negative prompt (in the same text-encoder batch) and runs the UNet on twice the batch in one call,
so the issue's budget is one more UNet batch element per sample: an APT step at batch B should cost about a
TI step at batch 2B, no more. Both ratios are printed and recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.harness import BenchRow, append_result, measure, step_benchmark_args
from bench.ti_speed import LR, PROMPT, build_bundle, liandan_step


class _Prompts:
    def __init__(self) -> None:
        self.images: list[object] = []  # APT looks images up for its reconstruction loss and attention maps

    def __len__(self) -> int:
        return 1

    def prompt(self, index: int, epoch: int) -> str:
        return PROMPT


def apt_step(
    bundle, size: int, batch: int, device: torch.device, mixed_precision: str = "no"
) -> Callable[[], None]:
    from liandan.host.base import CheckpointRef
    from liandan.jobs import AptJob, DataSpec, TrainSpec
    from liandan.methods.apt import Apt, new_pair

    job = AptJob(
        name="benchti",
        cfg_scale="3-5",
        train=TrainSpec(mixed_precision=mixed_precision),
        data=DataSpec(width=size, height=size),
    )
    context = SimpleNamespace(
        job=job, host=None, checkpoint=CheckpointRef(Path("bench.safetensors"), "bench"), bundle=bundle,
        dataset=_Prompts(), run_dir=Path(), device=device, say=print,
    )  # fmt: skip
    method = Apt(context, *new_pair(bundle, job), (Path("x.pt"), Path("x-neg.pt")))
    optimizer = torch.optim.AdamW([p for g in method.parameter_groups() for p in g.params], lr=LR)
    latent = size // bundle.vae_scale_factor
    batch_dict = {
        "latents": torch.randn(batch, 4, latent, latent, device=device),
        "prompts": [PROMPT] * batch,
    }

    def step() -> None:
        loss = method.loss(batch_dict)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    args = step_benchmark_args(argv, __doc__ or "")
    sizes, model, batch, device = args.sizes, args.model, args.batch, torch.device(args.device)
    bundle = build_bundle(model)
    for size in sizes:
        runs = {
            f"apt bs{batch}": apt_step(bundle, size, batch, device),
            f"ti bs{batch}": liandan_step(bundle, size, batch, device),
            f"ti bs{2 * batch}": liandan_step(bundle, size, 2 * batch, device),
        }
        times = {}
        for label, step in runs.items():
            result = measure(step, args.warmup, args.repeats)
            times[label] = result.median_s
            print(f"{label:10s} {model} {size}px: {result.summary()}")
        apt, ti, ti2 = times.values()
        print(f"apt / ti at {size}px: {apt / ti:.2f}x; apt / ti at twice the batch: {apt / ti2:.2f}x")
        if args.record:
            settings = f"sd1 {model} {size}px bs{batch} fp32 {device.type} AdamW, cfg 3-5"
            result_text = (f"APT {apt * 1000:.0f} ms, TI {ti * 1000:.0f} ms ({apt / ti:.2f}x), TI at "
                           f"bs{2 * batch} {ti2 * 1000:.0f} ms ({apt / ti2:.2f}x) per step")  # fmt: skip
            command = f"python -m bench.apt_speed --model {model} --size {size} --batch {batch} --record"
            append_result(BenchRow("apt-step", settings, result_text), command=command)


if __name__ == "__main__":
    main()
