"""bench/harness.py: it calls the function the right number of times, reports memory, writes the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import COLUMNS, BenchRow, append_result, benchmark_args, measure, peak_rss_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_measure_warms_up_then_times_each_repeat() -> None:
    calls = []
    result = measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7
    assert len(result.times_s) == 5
    assert min(result.times_s) <= result.median_s <= max(result.times_s)
    assert result.memory_kind == "cpu peak rss"


def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    before = peak_rss_bytes()
    blocks = []
    result = measure(lambda: blocks.append(bytearray(64 * 2**20)), warmup=0, repeats=2)
    assert result.peak_memory_bytes >= max(before, 128 * 2**20)


def test_bad_repeat_count_is_refused() -> None:
    with pytest.raises(ValueError, match="repeats=0"):
        measure(lambda: None, repeats=0)


def test_append_result_creates_then_extends_the_table(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    row = BenchRow("ti", "sd1 | 64 px", "12.0 ms")
    append_result(row, "python -m bench.ti", path=results, machine="box", date="2026-01-02")
    append_result(row, "python -m bench.ti --x", path=results, machine="box", date="2026-01-03")
    lines = results.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| date"))
    assert [c.strip() for c in lines[header].strip("|").split(" | ")] == list(COLUMNS)
    assert lines[header + 2 :] == [
        r"| 2026-01-02 | box | ti | sd1 \| 64 px | 12.0 ms | `python -m bench.ti` |",
        r"| 2026-01-03 | box | ti | sd1 \| 64 px | 12.0 ms | `python -m bench.ti --x` |",
    ]


def test_the_committed_table_is_well_formed(tmp_path: Path) -> None:
    committed = REPO_ROOT / "bench" / "RESULTS.md"
    copy = tmp_path / "RESULTS.md"
    copy.write_text(committed.read_text())
    append_result(BenchRow("b", "s", "r"), "c", path=copy, machine="m", date="d")
    assert copy.read_text() == committed.read_text().rstrip("\n") + "\n| d | m | b | s | r | `c` |\n"


def test_smoke_mode_runs_once_and_records_nothing() -> None:
    args = benchmark_args(["--smoke", "--record", "--repeats", "50"])
    assert (args.smoke, args.repeats, args.warmup, args.record) == (True, 1, 0, False)


def test_self_test_smoke_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.harness", "--smoke"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "ms median" in result.stdout
