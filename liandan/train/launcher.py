"""Catch a multi-process launch that silently became one process.

With accelerate 0.21, `accelerate launch --cpu --num_processes 2` starts ONE process: `--cpu` takes its
simple launcher, which ignores the process count and sets no WORLD_SIZE. The job would then run at half
the global batch and twice the time, with nothing said. The child can tell from its launcher's command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from liandan.errors import ConfigError


def parent_command_line() -> list[str]:
    """The launching process's arguments (Linux /proc; elsewhere nothing, and the check stays quiet)."""
    cmdline = Path(f"/proc/{os.getppid()}/cmdline")
    try:
        return [part for part in cmdline.read_bytes().decode("utf-8", "replace").split("\0") if part]
    except OSError:
        return []


def requested_processes(launcher_args: Sequence[str]) -> int | None:
    """The `--num_processes` an `accelerate launch` command line asks for, if any."""
    if "launch" not in launcher_args:
        return None
    for index, arg in enumerate(launcher_args):
        value = None
        if arg == "--num_processes" and index + 1 < len(launcher_args):
            value = launcher_args[index + 1]
        elif arg.startswith("--num_processes="):
            value = arg.partition("=")[2]
        if value is not None and value.isdigit():
            return int(value)
    return None


def check_process_count(environ: Mapping[str, str], launcher_args: Sequence[str]) -> None:
    """ConfigError when accelerate's CPU launcher was asked for several processes but started one."""
    wanted = requested_processes(launcher_args)
    single = environ.get("ACCELERATE_USE_CPU") == "True" and int(environ.get("WORLD_SIZE", "1")) == 1
    if wanted is None or wanted < 2 or not single:
        return
    raise ConfigError(
        f"accelerate launch --cpu starts one process whatever --num_processes says (you asked for {wanted}); "
        f"for {wanted} CPU processes run: CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu "
        f"--num_processes {wanted} --num_machines 1 --mixed_precision no --dynamo_backend no -m liandan "
        "train JOB (liandan trains on the CPU when it sees no GPU), or drop --num_processes for one process"
    )
