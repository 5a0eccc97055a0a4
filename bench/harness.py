"""Time a callable (a training step, an encode) and measure its peak memory; record results in RESULTS.md.

    from bench.harness import measure, append_result
    result = measure(step, warmup=2, repeats=10)
    row = BenchRow("ti-step", "sd1-tiny 64px bs1 fp32", result.summary())
    append_result(row, command="python -m bench.ti_step --record")

Timing is the median of `repeats` calls after `warmup` calls (CUDA work is synchronised before each clock
read). Memory is the peak over the measured calls: on CUDA `torch.cuda.max_memory_allocated` (reset after the
warm-up); on CPU the process's peak resident set size, which never goes down, so a CPU figure is the peak of
the whole process so far, not of the callable alone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
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


def _synchronize() -> None:
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
        _synchronize()
        sys.modules["torch"].cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        return Measurement(
            statistics.median(times),
            tuple(times),
            sys.modules["torch"].cuda.max_memory_allocated(),
            "cuda allocated",
        )
    return Measurement(statistics.median(times), tuple(times), peak_rss_bytes(), "cpu peak rss")


def training_step(loss: Callable[[], Any], optimizer: Any) -> Callable[[], None]:
    """One optimizer step of `loss()`: backward, step, zero the gradients."""

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def machine_description() -> str:
    """CPU model and core count, plus the GPU when CUDA is in use."""
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
    return description


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


def step_benchmark_args(argv: Sequence[str] | None = None, description: str = "") -> argparse.Namespace:
    """benchmark_args plus the training-step scripts' own flags: --model, --size (into `sizes`), --batch,
    --device; --smoke takes the tiny model at 64 px."""
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    extra.add_argument("--size", type=int, nargs="+", default=[64, 128])
    extra.add_argument("--batch", type=int, default=1)
    extra.add_argument("--device", default="cpu")
    known, rest = extra.parse_known_args(argv)
    args = benchmark_args(rest, description)
    args.model = "tiny" if args.smoke else known.model
    args.sizes = [64] if args.smoke else known.size
    args.batch, args.device = known.batch, known.device
    return args


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
