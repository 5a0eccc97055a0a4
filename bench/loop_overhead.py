"""What the training loop adds per step: liandan's loop (train/loop.py) running a textual-inversion job's
step, against the same step called bare (the method's loss, backward, the loop's optimizer), in rounds that
alternate the two in one process.

    python -m bench.loop_overhead --smoke
    python -m bench.loop_overhead --model tiny --size 64 --record
    python -m bench.loop_overhead --model sd15 --size 512 --batch 8 --device cuda --record   # on a GPU

The loop's side is everything a job does per step besides the step itself: building the batch from cached
latents, the NaN guard's read of the loss and the gradients' finiteness, the loss CSV row and progress
event, the interrupt and save checks. Its per-step time is taken between the progress events of a round's
steps after the first few (a round is one `train` call of `--steps` steps on a fresh run folder), the bare
side's as the mean of as many calls. On CUDA the loop also runs as the CPU does, reading each step's status
before stepping ("read first"): against the default ("pipelined", the status read one step late) it shows
what the host's waiting for the device cost.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from bench.harness import BenchRow, append_result, method_step, step_benchmark_args, synchronize
from bench.ti_speed import LR, PROMPT, build_bundle, liandan_method

SETTLE_STEPS = 3  # the first steps of a round (the audit's read, warm caches) are not timed


class CachedLatents:
    """A dataset of `count` cached latents and one prompt: what the loop's batch building starts from."""

    needs_vae = False

    def __init__(self, latent: torch.Tensor, count: int) -> None:
        self.latent, self.count = latent, count

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        """Nothing varies by epoch."""

    def item(self, index: int, epoch: int) -> dict[str, Any]:
        return {"latent": self.latent, "prompt": PROMPT}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, 0)

    def drop_vae(self) -> None:
        """There is none."""

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"latents": torch.stack([i["latent"] for i in items]), "prompts": [i["prompt"] for i in items]}


@contextmanager
def status_read_first() -> Iterator[None]:
    """The loop as it runs on a CPU: each step's status read before the optimizer steps."""
    from liandan.train import nan_guard

    devices = nan_guard.PIPELINED_DEVICES
    nan_guard.PIPELINED_DEVICES = ()
    try:
        yield
    finally:
        nan_guard.PIPELINED_DEVICES = devices


def loop_round(bundle, args, steps: int, read_first: bool = False) -> float:
    """Seconds per step of one `train` run of `steps` steps, between its settled steps' progress events."""
    from liandan.jobs import TrainSpec
    from liandan.progress import Control, Reporter
    from liandan.train.loop import train

    spec = TrainSpec(learn_rate=str(LR), max_steps=steps, batch_size=args.batch, save_every=0,
                     preview_every=0, resume=False)  # fmt: skip
    device = torch.device(args.device)
    latent = torch.randn(4, args.size // bundle.vae_scale_factor, args.size // bundle.vae_scale_factor)
    times: list[float] = []

    def on_event(event) -> None:
        if event.kind == "step":
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as folder, status_read_first() if read_first else nullcontext():
        method = liandan_method(bundle, args.size, device, spec, Path(folder))
        dataset = CachedLatents(latent, count=args.batch * steps)
        train(method, dataset, spec, run_dir=Path(folder) / "run", reporter=Reporter(on_event),
              control=Control(), self_test=False, tensorboard=False)  # fmt: skip
        method.close()
    settled = times[SETTLE_STEPS:]
    return (settled[-1] - settled[0]) / (len(settled) - 1)


def bare_round(step: Callable[[], None], steps: int) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - start) / steps


def bare_step(bundle, args) -> Callable[[], None]:
    from liandan.jobs import TrainSpec

    device = torch.device(args.device)
    method = liandan_method(bundle, args.size, device, TrainSpec())
    latent = args.size // bundle.vae_scale_factor
    batch = {
        "latents": torch.randn(args.batch, 4, latent, latent, device=device),
        "prompts": [PROMPT] * args.batch,
    }
    return method_step(method, batch, LR, device)


def main(argv: list[str] | None = None) -> None:
    def add_arguments(parser) -> None:
        parser.add_argument("--steps", type=int, default=23, help="steps per round (the first 3 untimed)")

    args = step_benchmark_args(argv, __doc__ or "", add_arguments)
    (args.size,) = args.sizes[:1]
    steps = SETTLE_STEPS + 2 if args.smoke else args.steps
    bundle = build_bundle(args.model)
    step = bare_step(bundle, args)
    sides: dict[str, Callable[[], float]] = {
        "loop": lambda: loop_round(bundle, args, steps),
        "bare step": lambda: bare_round(step, steps - SETTLE_STEPS),
    }
    if args.device.startswith("cuda"):
        sides["loop, status read first"] = lambda: loop_round(bundle, args, steps, read_first=True)
    rounds = 1 if args.smoke else args.repeats
    per_step: dict[str, list[float]] = {label: [] for label in sides}
    for round_index in range(args.warmup + rounds):
        for label in list(sides) if round_index % 2 == 0 else list(sides)[::-1]:
            seconds = sides[label]()
            if round_index >= args.warmup:
                per_step[label].append(seconds)
    medians = {label: statistics.median(values) * 1000 for label, values in per_step.items()}
    bare = medians["bare step"]
    parts = [f"{label} {ms:.1f} ms" + ("" if label == "bare step" else f" ({ms - bare:+.1f} ms)")
             for label, ms in medians.items()]  # fmt: skip
    result = "; ".join(parts) + f" per step (median of {rounds} rounds of {steps - SETTLE_STEPS} steps)"
    print(result)
    if args.record:
        settings = f"ti sd1 {args.model} {args.size}px bs{args.batch} fp32 AdamW, {args.device}"
        command = "python -m bench.loop_overhead " + " ".join(a for a in args.argv if a != "--record")
        append_result(BenchRow("loop-overhead", settings, result), command=command + " --record")


if __name__ == "__main__":
    main()
