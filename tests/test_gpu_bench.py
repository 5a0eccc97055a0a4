"""bench/gpu.py: its smoke path runs a case end to end, a failing case is reported and the run goes on, the
time budget lists what it did not run, and the targets are judged as the issue states them."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from bench import gpu


def _rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


def test_smoke_runs_the_fused_8bit_dreambooth_case(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    gpu.main(["--smoke", "--only", "dreambooth sd1 512px bs1 (AdamW8bit, ckpt, fused)", "--out", str(out)])
    [row] = _rows(out)
    assert row[:5] == ["dreambooth", "sd1", "64", "1", "AdamW8bit, ckpt, fused"]
    assert float(row[5]) > 0 and row[8] == ""  # a rate, no error, no target judged on the tiny model


def _live_tensor_bytes() -> int:
    """Bytes of the real CPU tensors alive; not the fake ones an earlier torch.compile left in gc (they have
    no storage to measure)."""
    storages = {}
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.device.type == "cpu":
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return sum(storages.values())


def test_a_finished_case_leaves_none_of_its_model_alive() -> None:
    case = gpu.Case("dreambooth", "sd1", 1, gpu.Switches(fused_backward=True))  # hooks tie UNet and optimizer
    before = _live_tensor_bytes()
    result = gpu.run_case(case, torch.device("cpu"), smoke=True, warmup=0, repeats=1)
    assert result.note == ""
    assert _live_tensor_bytes() - before < 2**20  # the tiny UNet alone is tens of MiB


def test_a_failing_case_is_reported_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = gpu.build_case

    def build(case: gpu.Case, device, smoke: bool):
        if case.switches.checkpointing:
            raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")
        return real_build(case, device, smoke)

    cases = (gpu.Case("ti", "sd1", 1, gpu.Switches(checkpointing=True)), gpu.Case("hn", "sd1", 1))
    monkeypatch.setattr(gpu, "build_case", build)
    monkeypatch.setattr(gpu, "CASES", cases)
    out = tmp_path / "gpu.md"
    gpu.main(["--smoke", "--out", str(out)])
    failed, ran = _rows(out)
    assert failed[8] == "error: RuntimeError: CUDA out of memory" and failed[5] == ""
    assert ran[0] == "hn" and float(ran[5]) > 0 and ran[8] == ""


def test_an_exhausted_budget_lists_every_case_as_not_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    gpu.main(["--smoke", "--budget", "0", "--out", str(out)])
    rows = _rows(out)
    assert len(rows) == len(gpu.CASES)
    assert {row[8] for row in rows} == {"not run (time budget)"}


def test_targets_pass_and_fail_at_their_bounds() -> None:
    fast, lean = gpu.Target("fast", min_images_per_s=250), gpu.Target("lean", max_peak_gb=6)
    assert fast.met(250.0, 100.0) and not fast.met(249.9, 0.1)
    assert lean.met(1.0, 6.0) and not lean.met(1000.0, 6.01)
    judged = gpu.Result(gpu.CASES[0], 512, 32, images_per_s=300.0, peak_gb=7.0)
    assert judged.cells()[7:] == [">= 250 images/s", "PASS"]
