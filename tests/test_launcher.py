"""`accelerate launch --cpu --num_processes 2` starts one process (accelerate 0.21): the job says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liandan.errors import ConfigError
from liandan.train.launcher import check_process_count, requested_processes

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_LAUNCHER_ENV = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "liandan"], 2),
        (["accelerate", "launch", "--num_processes=4", "x.py"], 4),
        (["accelerate", "launch", "--cpu", "-m", "liandan"], None),
        (["bash", "--num_processes", "2"], None),  # not a launch command line
    ],
)
def test_requested_processes(args: list[str], wanted: int | None) -> None:
    assert requested_processes(args) == wanted


def test_one_process_where_two_were_asked_for_is_refused_with_the_way_to_two() -> None:
    args = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "liandan", "train", "j.toml"]
    with pytest.raises(ConfigError) as caught:
        check_process_count(CPU_LAUNCHER_ENV, args)
    message = str(caught.value)
    assert "starts one process whatever --num_processes says (you asked for 2)" in message
    assert "accelerate launch --multi_gpu --num_processes 2 --num_machines 1" in message

    check_process_count({**CPU_LAUNCHER_ENV, "WORLD_SIZE": "2"}, args)  # a launcher that did start two
    check_process_count({}, args)  # not accelerate's CPU launcher
    check_process_count(CPU_LAUNCHER_ENV, ["accelerate", "launch", "--cpu", "--num_processes", "1"])


@pytest.mark.slow
def test_real_accelerate_cpu_launch_stops_before_training(tmp_path: Path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is part of the environment"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    command = [accelerate, "launch", "--cpu", "--num_processes", "2", "-m", "liandan", "train", "job.toml"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "error: accelerate launch --cpu starts one process" in done.stderr
