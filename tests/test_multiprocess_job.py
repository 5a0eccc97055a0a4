"""A real textual-inversion job on two CPU processes, launched the way the README says:
`accelerate launch -m liandan train job.toml`. Both ranks train, rank 0 alone writes, and what it writes is
one coherent run (one CSV row per step, a final embedding A1111 loads).

accelerate 0.21 starts one process for `--cpu --num_processes 2`, hence `--multi_gpu` with CUDA hidden:
the loop then builds a CPU (gloo) Accelerator.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from a1111_safe_unpickler import check_pt

from liandan.formats.embedding import load_embedding
from liandan.models.tiny import write_tiny_models

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_two_processes(job: Path, data: Path, timeout: float = 600) -> None:
    """`accelerate launch -m liandan train JOB --data-dir DATA` on two CPU processes."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    command = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "liandan", "train", str(job), "--data-dir", str(data),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


@pytest.mark.slow
def test_accelerate_launch_runs_a_textual_inversion_job_on_two_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tiny_models(data / "models" / "Stable-diffusion")
    job = tmp_path / "job.toml"
    job.write_text(
        'kind = "textual_inversion"\nname = "twoproc"\nvectors = 2\n'
        f"[train]\nmax_steps = {STEPS}\nsave_every = 2\npreview_every = 0\nbatch_size = 1\n"
        f'[data]\nfolder = "{(REPO_ROOT / "examples" / "images").as_posix()}"\nwidth = 64\nheight = 64\n'
        "[preview]\nsteps = 2\nwidth = 64\nheight = 64\nseed = 1\n"
    )
    train_on_two_processes(job, data)

    final = data / "embeddings" / "twoproc.pt"
    check_pt(final)
    embedding = load_embedding(final)
    assert embedding.step == STEPS and embedding.num_vectors == 2
    (run_dir,) = (data / "textual_inversion").glob("*/twoproc")
    with (run_dir / "textual_inversion_loss.csv").open(newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (run_dir / "embeddings").glob("*.pt")) == ["twoproc-2.pt", "twoproc-4.pt"]
