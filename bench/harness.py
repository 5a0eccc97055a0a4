"""Time a callable (a training step, an encode) and measure its peak memory; record results in RESULTS.md.

    from bench.harness import measure, append_result
    result = measure(step, warmup=2, repeats=10)
    row = BenchRow("ti-step", "sd1-tiny 64px bs1 fp32", result.summary())
    append_result(row, command="python -m bench.ti_step --record")

Timing is the median of `repeats` calls after `warmup` calls (CUDA work is synchronised before each clock
read). Memory is the peak over the measured calls: on CUDA `torch.cuda.max_memory_allocated` (reset after the
warm-up); on CPU the process's peak resident set size, which never goes down, so a CPU figure is the peak of
the whole process so far, not of the callable alone.

Step comparisons (`run_comparison`: liandan's step against a plain loop at identical settings) time the
sides interleaved in one process — round r calls every side once, in reverse order on odd rounds — so a
busy machine slows both alike and the ratio holds; each side's memory comes from a process of its own that
builds only that side (`--side`): the peak RSS above what it held before building the side (the libraries
that side imports count; on a tiny model they are most of it), or the CUDA peak.
`--separate` also takes the timings from such processes, alternating the sides over `--rounds`, for
models too large to hold both sides at once. `--model-work` adds the plain loop's model work alone (its
forward and backward, no per-step encodes, no optimizer step): the floor that removing per-step work can
reach.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liandan.atomic_files import write_text_atomic

RESULTS_FILE = Path(__file__).resolve().with_name("RESULTS.md")
COLUMNS = ("date", "machine", "benchmark", "settings", "result", "command")
TABLE_HEADER = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
TABLE_START = "<!-- results table: bench/harness.py appends rows below -->"


@dataclass(frozen=True)
class Measurement:
    """Seconds per call (median, and every measured call) and the peak memory in bytes."""

    median_s: float
    times_s: tuple[float, ...]
    peak_memory_bytes: int
    memory_kind: str  # "cuda allocated" or "cpu peak rss"

    def summary(self) -> str:
        spread = f"{min(self.times_s) * 1000:.1f}–{max(self.times_s) * 1000:.1f}"
        memory = self.peak_memory_bytes / 2**20
        return (
            f"{self.median_s * 1000:.1f} ms median ({spread} ms, n={len(self.times_s)}); "
            f"peak {memory:.0f} MiB {self.memory_kind}"
        )


@dataclass(frozen=True)
class BenchRow:
    benchmark: str
    settings: str
    result: str


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")  # only a benchmark that imported torch can have CUDA work in flight
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


def synchronize() -> None:
    if _cuda_in_use():
        sys.modules["torch"].cuda.synchronize()


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def measure(fn: Callable[[], object], warmup: int = 2, repeats: int = 10) -> Measurement:
    """Call `fn` `warmup` times unmeasured, then `repeats` times timed; see the module doc for memory."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    cuda = _cuda_in_use()
    if cuda:
        synchronize()
        sys.modules["torch"].cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        return Measurement(
            statistics.median(times),
            tuple(times),
            sys.modules["torch"].cuda.max_memory_allocated(),
            "cuda allocated",
        )
    return Measurement(statistics.median(times), tuple(times), peak_rss_bytes(), "cpu peak rss")


def reset_peak_rss() -> None:
    """Make the peak RSS (VmHWM) start again from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def current_rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def interleaved(
    steps: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, tuple[float, ...]]:
    """Seconds per call of every step, the steps called in turn (see the module doc); warm-up calls first."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for round_index in range(repeats):
        order = list(steps) if round_index % 2 == 0 else list(steps)[::-1]
        for label in order:
            synchronize()
            start = time.perf_counter()
            steps[label]()
            synchronize()
            times[label].append(time.perf_counter() - start)
    return {label: tuple(values) for label, values in times.items()}


def training_step(loss: Callable[[], Any], optimizer: Any, step_optimizer: bool = True) -> Callable[[], None]:
    """One optimizer step of `loss()`: backward, step, zero the gradients. Without `step_optimizer` only the
    model work: backward, and the gradients dropped."""

    def step() -> None:
        loss().backward()
        if step_optimizer:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def method_context(job: Any, bundle: Any, device: Any, dataset: Any = None, say: Callable = print) -> Any:
    """What a liandan method is built from (train/training_job.py's MethodContext), for a benchmark: no host
    and no run folder; by default a dataset with no fixed prompts, so the cond cache fills on first use."""
    from types import SimpleNamespace

    from liandan.host.base import CheckpointRef

    return SimpleNamespace(
        job=job, host=None, checkpoint=CheckpointRef(Path("bench.safetensors"), "bench"), bundle=bundle,
        dataset=dataset if dataset is not None else SimpleNamespace(parts=[]), run_dir=Path(), device=device,
        say=say,
    )  # fmt: skip


def method_step(
    method: Any, batch: dict[str, Any], learn_rate: float, device: Any, mixed_precision: str = "no"
) -> Callable[[], None]:
    """One step of a liandan TrainingMethod as the loop takes it: the method's loss on `batch` under the
    mixed-precision autocast, backward, the loop's optimizer (train/optimizers.py's AdamW, fused)."""
    import torch

    from liandan.train.optimizers import build_optimizer

    optimizer = build_optimizer("AdamW", method.parameter_groups(), learn_rate, 0.0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)

    def loss() -> Any:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return method.loss(batch)

    return training_step(loss, optimizer)


BENCH_LIBRARIES = ("torch", "diffusers", "peft", "lycoris")  # the versions a step time depends on


def machine_description() -> str:
    """CPU model and core count, plus the GPU when CUDA is in use, and the versions that set the speed."""
    from liandan.versions import library_versions

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    description = f"{cpu}, {os.cpu_count()} cores"
    if _cuda_in_use():
        description += f", {sys.modules['torch'].cuda.get_device_name()}"
    versions = library_versions()
    return (
        description
        + "; "
        + ", ".join(f"{name} {versions[name]}" for name in BENCH_LIBRARIES if name in versions)
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def append_result(
    row: BenchRow,
    command: str,
    path: Path = RESULTS_FILE,
    machine: str | None = None,
    date: str | None = None,
) -> str:
    """Append one row to the results table in `path` (creating the table if needed); returns the row."""
    cells = (
        date or datetime.date.today().isoformat(),
        machine or machine_description(),
        row.benchmark,
        row.settings,
        row.result,
        f"`{command}`",
    )
    line = "| " + " | ".join(_cell(c) for c in cells) + " |\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if TABLE_START not in text:
        text = text.rstrip("\n") + f"\n\n{TABLE_START}\n\n{TABLE_HEADER}"
    write_text_atomic(path, text.rstrip("\n") + "\n" + line)
    return line


def benchmark_args(argv: Sequence[str] | None = None, description: str = "") -> argparse.Namespace:
    """Flags every bench script shares: --smoke (seconds, records nothing), --repeats, --warmup, --record."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat; proves the script runs")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--record", action="store_true", help=f"append the result to {RESULTS_FILE.name}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.warmup, args.record = 1, 0, False
    return args


def step_benchmark_args(
    argv: Sequence[str] | None = None,
    description: str = "",
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> argparse.Namespace:
    """benchmark_args plus the training-step scripts' own flags: --model, --size (into `sizes`), --batch,
    --device, --threads, --compile (a side of ours with train.torch_compile), --model-work (a side with the
    plain loop's model work alone, `model_work_side`), and run_comparison's --separate, --rounds and --side;
    `add_arguments` adds a script's own. --smoke takes the tiny model at 64 px, with the model-work side.
    `argv` is kept (as `argv`) for the side processes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    extra.add_argument("--size", type=int, nargs="+", default=[64, 128])
    extra.add_argument("--batch", type=int, default=1)
    extra.add_argument("--device", default="cpu")
    extra.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    extra.add_argument("--separate", action="store_true", help="time each side in a process of its own")
    extra.add_argument("--rounds", type=int, default=3, help="with --separate: processes per side")
    extra.add_argument("--compile", action="store_true", help="also time ours with train.torch_compile")
    extra.add_argument("--model-work", action="store_true", help=f"also time the {MODEL_WORK} (see the doc)")
    extra.add_argument("--side", help=argparse.SUPPRESS)  # a side process: build and run only this side
    add_arguments(extra)
    known, rest = extra.parse_known_args(argv)
    args = benchmark_args(rest, description)
    vars(args).update(vars(known))
    args.argv = argv
    if args.smoke:  # every side builds and runs, the model-work one too
        args.model, args.size, args.rounds, args.model_work = "tiny", [64], 1, True
    args.sizes = args.size
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


SideFactory = Callable[[], Callable[[], object]]  # builds one side (model, optimizer); returns its step
MODEL_WORK = "model work alone"


def model_work_side(
    args: argparse.Namespace, sides: dict[str, SideFactory], model_work: SideFactory
) -> dict[str, SideFactory]:
    """With --model-work, `sides` with one more just before the plain loop (the last, which ratios are taken
    against): the plain loop's forward and backward alone, on inputs its frozen encoders encoded once, with no
    optimizer step (`model_work`, which the plain builder makes with `model_work_only=True`). No step at
    identical settings can do less, so its ratio is the floor of what removing per-step work can reach;
    going below it takes faster model compute (torch_compile)."""
    if not args.model_work:
        return sides
    *ours, plain = sides.items()
    return dict([*ours, (MODEL_WORK, model_work), plain])


SIDE_RESULT = "bench-side-result:"  # the line a side process prints its JSON after


@dataclass(frozen=True)
class Comparison:
    """A step benchmark for `run_comparison`: per size, the sides to build (ours first, the plain loop it is
    measured against last) and the settings column."""

    benchmark: str
    module: str  # `python -m` name: the command column and the side processes
    sides: Callable[[argparse.Namespace, int], dict[str, SideFactory]]
    settings: Callable[[argparse.Namespace, int], str]


StepBuilder = Callable[..., Callable[[], object]]  # (bundle, size, batch, device) -> step


def fresh_sides(
    builders: dict[str, StepBuilder], build_model: Callable[[str], Any]
) -> Callable[[argparse.Namespace, int], dict[str, SideFactory]]:
    """Comparison.sides where each side builds its step on a fresh copy of `args.model` (every side changes
    the model it trains: hooks, adapters, its own weights). With --compile, the first builder (ours) also
    builds a side with `torch_compile=True`; with --model-work, the last (the plain loop) one with
    `model_work_only=True`."""

    def sides(args: argparse.Namespace, size: int) -> dict[str, SideFactory]:
        import torch

        device = torch.device(args.device)
        chosen = dict(builders)
        if args.compile:
            ours, *rest = builders.items()
            compiled = (f"{ours[0]} compiled", functools.partial(ours[1], torch_compile=True))
            chosen = dict([ours, compiled, *rest])
        factories = {
            label: lambda build=build: build(build_model(args.model), size, args.batch, device)
            for label, build in chosen.items()
        }
        plain = list(builders.values())[-1]

        def model_work() -> Callable[[], object]:
            return plain(build_model(args.model), size, args.batch, device, model_work_only=True)

        return model_work_side(args, factories, model_work)

    return sides


@dataclass(frozen=True)
class SideResult:
    times_s: tuple[float, ...]
    peak_bytes: int  # above what the process held before building the side (what that imported included)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def _peak_since(start_rss: int) -> int:
    if _cuda_in_use():
        return sys.modules["torch"].cuda.max_memory_allocated()
    status = Path("/proc/self/status").read_text()
    peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return peak_kib * 1024 - start_rss


def _run_side(factory: SideFactory, args: argparse.Namespace) -> SideResult:
    """In a side process: build the side, time it (or just warm it up for memory), report the peak."""
    start_rss = current_rss_bytes()
    reset_peak_rss()
    step = factory()
    times = interleaved({"side": step}, args.warmup, args.repeats)["side"]
    return SideResult(times, _peak_since(start_rss))


def _side_process(comparison: Comparison, args: argparse.Namespace, size: int, label: str) -> SideResult:
    argv = [a for a in args.argv if a != "--record"]
    size_at = argv.index("--size") if "--size" in argv else -1
    if size_at >= 0:  # only this size
        end = size_at + 1
        while end < len(argv) and not argv[end].startswith("--"):
            end += 1
        argv[size_at:end] = []
    command = [sys.executable, "-m", comparison.module, *argv, "--size", str(size), "--side", label]
    if not args.separate:  # memory only: a warm-up and two steps are enough for the peak
        command += ["--warmup", "1", "--repeats", "2"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(SIDE_RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"side process {label!r} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    fields = json.loads(lines[-1].removeprefix(SIDE_RESULT))
    return SideResult(tuple(fields["times_s"]), fields["peak_bytes"])


def compare_sides(comparison: Comparison, args: argparse.Namespace, size: int) -> dict[str, SideResult]:
    """Time and measure every side at one size (see the module doc)."""
    labels = list(comparison.sides(args, size))
    if args.separate:
        runs: dict[str, list[SideResult]] = {label: [] for label in labels}
        for round_index in range(args.rounds):
            for label in labels if round_index % 2 == 0 else labels[::-1]:
                runs[label].append(_side_process(comparison, args, size, label))
        return {
            label: SideResult(
                tuple(t for run in results for t in run.times_s), max(run.peak_bytes for run in results)
            )
            for label, results in runs.items()
        }
    steps = {label: factory() for label, factory in comparison.sides(args, size).items()}
    times = interleaved(steps, args.warmup, args.repeats)
    del steps
    memory = {label: _side_process(comparison, args, size, label).peak_bytes for label in labels}
    return {label: SideResult(times[label], memory[label]) for label in labels}


def run_comparison(comparison: Comparison, args: argparse.Namespace) -> None:
    """The whole step benchmark: every size in `args.sizes`, printed; `--record` appends one row per size."""
    if args.side:  # a side process
        (size,) = args.sizes
        result = _run_side(comparison.sides(args, size)[args.side], args)
        print(SIDE_RESULT + json.dumps({"times_s": result.times_s, "peak_bytes": result.peak_bytes}))
        return
    for size in args.sizes:
        results = compare_sides(comparison, args, size)
        base = results[list(results)[-1]]
        parts = []
        for label, result in results.items():
            ms, mib = result.median_s * 1000, result.peak_bytes / 2**20
            spread = f"{min(result.times_s) * 1000:.0f}–{max(result.times_s) * 1000:.0f}"
            ratios = ""
            if result is not base:
                memory_ratio = result.peak_bytes / max(base.peak_bytes, 1)
                ratios = f" ({result.median_s / base.median_s:.2f}x time, {memory_ratio:.2f}x memory)"
            times = f"{ms:.1f} ms median ({spread}, n={len(result.times_s)})"
            print(f"{label:24s} {size}px: {times}, peak +{mib:.0f} MiB{ratios}")
            parts.append(f"{label} {ms:.0f} ms, +{mib:.0f} MiB{ratios}")
        if args.record:
            mode = f"{args.rounds} processes per side" if args.separate else "interleaved"
            result_text = "; ".join(parts) + f" (median of {len(base.times_s)}, {mode})"
            threads = _threads_note(args)
            row = BenchRow(comparison.benchmark, comparison.settings(args, size) + threads, result_text)
            command_argv = [a for a in args.argv if a != "--record"]
            append_result(row, command=" ".join(["python -m", comparison.module, *command_argv, "--record"]))


def _threads_note(args: argparse.Namespace) -> str:
    if args.device != "cpu":
        return ""
    import torch

    return f", {torch.get_num_threads()} thread(s)"


def _self_test(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.harness --smoke`: measure a small matrix product, print the row it would record."""
    args = benchmark_args(argv, "time a small matrix product with the harness")
    size = 32 if args.smoke else 256
    matrix = [[float(i + j) for j in range(size)] for i in range(size)]

    def multiply() -> None:
        [[sum(a * b for a, b in zip(r, c)) for c in zip(*matrix)] for r in matrix]

    result = measure(multiply, warmup=args.warmup, repeats=args.repeats)
    row = BenchRow("harness self-test", f"pure-Python {size}x{size} matmul", result.summary())
    command = "python -m bench.harness" + (" --smoke" if args.smoke else "")
    if args.record:
        append_result(row, command)
    print(f"{row.benchmark}: {row.settings}: {row.result}")


if __name__ == "__main__":
    _self_test()
