"""Two CPU processes through `accelerate launch`: identical weights on both ranks after every step, only
rank 0 writes files, and the result equals one process accumulating the same batches (the same global
batch). Both ways gradients meet are run: the loop's flat all-reduce (small trainables) and DDP through
`accelerator.prepare` (a large-module method, whose loss calls the wrapper the loop hands it). An
interrupt made to one rank stops both at the same step, one step later (the per-step votes are counted a
step late, so no rank waits for them).

With accelerate 0.21, `accelerate launch --cpu --num_processes 2` starts ONE process, so the test launches
with `--multi_gpu` and the worker (this file run as a script) builds `Accelerator(cpu=True)` (gloo).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_toy_method import ToyDataset, ToyMethod
from safetensors.torch import load_file, save_file

from liandan.jobs import TrainSpec
from liandan.progress import Control, Reporter
from liandan.train.loop import Validation, train

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
# scored on every rank: a DDP forward is a collective, so a rank that skipped it would hang the others
VALIDATION = Validation(ToyDataset(4, seed=5), every=3, timesteps=(0, 500))


def plan(epoch: int) -> list[list[int]]:
    """A fixed plan so the 2-process and the 1-process runs see the same batches per step."""
    return [[0, 1], [2, 3], [4, 5], [6, 7]] if epoch % 2 == 0 else [[6, 7], [4, 5], [2, 3], [0, 1]]


def spec(accumulation: int) -> TrainSpec:
    return TrainSpec(
        learn_rate="0.01",
        max_steps=STEPS,
        batch_size=2,
        gradient_accumulation=accumulation,
        save_every=3,
        preview_every=3,
    )


class InterruptedAfter(Control):
    """Rank 1's Interrupt, pressed once its method has taken `step` steps."""

    def __init__(self, method: ToyMethod, rank: int, step: int) -> None:
        super().__init__()
        self.method, self.rank, self.step = method, rank, step

    @property
    def interrupted(self) -> bool:
        return self.rank == 1 and len(self.method.weights_after_step) >= self.step


def worker(run_dir: Path, report_dir: Path, gradient_sync: str, interrupt_at: int = 0) -> None:
    """Runs in each launched process."""
    from accelerate import Accelerator

    from liandan.train import distributed

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=1)
    rank = accelerator.process_index
    if gradient_sync == "prepare":  # DDP must do the averaging: the flat all-reduce may not run
        distributed.average_gradients = None  # type: ignore[assignment]
    # Different initial weights per rank: the loop must start all ranks from rank 0's.
    method = ToyMethod(run_dir / "out", seed=rank, global_rng=False, gradient_sync=gradient_sync)
    result = train(
        method,
        ToyDataset(8),
        spec(1),
        run_dir=run_dir,
        reporter=Reporter(),
        control=InterruptedAfter(method, rank, interrupt_at) if interrupt_at else Control(),
        batch_plan=plan,
        preview_prompt="p",
        accelerator=accelerator,
        tensorboard=False,
        validation=VALIDATION,
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    save_file(method.trainable_state(), str(report_dir / f"weights-{rank}.safetensors"))
    save_file(
        {"steps": torch.stack(method.weights_after_step)}, str(report_dir / f"steps-{rank}.safetensors")
    )
    report = {
        "wrapped_in": [type(m).__name__ for m in method.prepared],
        "saves": method.saves,
        "previews": len(method.previews),
        "step": result.step,
        "reason": result.stopped_reason,
        "world": accelerator.num_processes,
        "batch_sizes": method.batch_sizes,
        "validation": result.validation_losses,
    }
    (report_dir / f"report-{rank}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir: Path, report_dir: Path, *worker_args: str) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    command = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        __file__,
        str(run_dir),
        str(report_dir),
        *worker_args,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("gradient_sync", ["all_reduce", "prepare"])
def test_two_processes_agree_and_only_rank_0_writes(tmp_path: Path, gradient_sync: str) -> None:
    run_dir, report_dir = tmp_path / "run", tmp_path / "report"
    _launch(run_dir, report_dir, gradient_sync)
    reports = [json.loads((report_dir / f"report-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    wrapped = ["DistributedDataParallel"] if gradient_sync == "prepare" else []
    assert [r["wrapped_in"] for r in reports] == [wrapped, wrapped]
    assert reports[0]["step"] == reports[1]["step"] == STEPS
    assert reports[0]["saves"] == [[3, False], [6, False], [6, True]] and reports[0]["previews"] > 0
    assert reports[1]["saves"] == [] and reports[1]["previews"] == 0
    weights = [load_file(str(report_dir / f"weights-{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    per_step = [load_file(str(report_dir / f"steps-{r}.safetensors"))["steps"] for r in (0, 1)]
    assert per_step[0].shape[0] == STEPS and torch.equal(per_step[0], per_step[1])
    with (run_dir / "loss.csv").open(newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, STEPS + 1))

    # One process accumulating the two ranks' batches takes the same steps.
    single = ToyMethod(tmp_path / "single" / "out", seed=0, global_rng=False, gradient_sync=gradient_sync)
    alone = train(
        single,
        ToyDataset(8),
        spec(2),
        run_dir=tmp_path / "single",
        reporter=Reporter(),
        control=Control(),
        batch_plan=plan,
        tensorboard=False,
        validation=VALIDATION,
    )
    assert all(torch.allclose(single.trainable_state()[k], weights[0][k], atol=1e-6) for k in weights[0])
    assert torch.allclose(torch.stack(single.weights_after_step), per_step[0], atol=1e-6)
    assert [step for step, _ in reports[0]["validation"]] == [3, 6]
    assert reports[0]["validation"] == reports[1]["validation"]
    assert torch.allclose(torch.tensor(alone.validation_losses), torch.tensor(reports[0]["validation"]))


@pytest.mark.slow
def test_an_interrupt_on_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    run_dir, report_dir = tmp_path / "run", tmp_path / "report"
    _launch(run_dir, report_dir, "all_reduce", "2")
    reports = [json.loads((report_dir / f"report-{r}.json").read_text()) for r in (0, 1)]
    # pressed on rank 1 after step 2, counted by both at step 3
    assert [(r["step"], r["reason"]) for r in reports] == [(3, "interrupted")] * 2
    assert reports[0]["saves"] == [[3, True]]
    weights = [load_file(str(report_dir / f"weights-{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:]))
