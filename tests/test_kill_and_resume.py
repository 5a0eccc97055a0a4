"""Kill and resume: a training process killed with SIGKILL at random steps, started again until it finishes,
ends with exactly the files of a run that was never interrupted (CPU), for every training method's example.

The runs are real `python -m liandan train` processes on the tiny default model. The killer watches the
loss log, so it strikes between any two steps, and often before the first save: then the run starts over.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from liandan.formats.embedding import load_embedding
from liandan.formats.hypernetwork import load_hypernetwork
from liandan.formats.lora import read_lora

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
SETTINGS = [
    f"train.max_steps={STEPS}",
    "train.save_every=2",
    "train.preview_every=0",
    "preview.self_test=false",
]

# the DreamBooth example starts over on each run; here a run must continue its killed predecessor
EXTRA_SETTINGS = {"dreambooth_tiny.toml": ["train.resume=true", "overwrite=false"]}


def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# example job -> (the files it writes, relative to the data dir; how to read their trained tensors)
EXAMPLES = {
    "demo_ti.toml": (["embeddings/liandan-demo.pt"], lambda p: load_embedding(p).vectors),
    "hypernetwork_tiny.toml": (
        ["models/hypernetworks/tiny_hn.pt"],
        lambda p: dict(load_hypernetwork(p).state_dict()),
    ),
    "lora_tiny.toml": (["models/Lora/tiny_lora.safetensors"], lambda p: read_lora(p).tensors),
    "locon_tiny.toml": (["models/Lora/tiny_locon.safetensors"], lambda p: read_lora(p).tensors),
    "dreambooth_tiny.toml": (["models/Stable-diffusion/tiny_dreambooth.safetensors"], _checkpoint_tensors),
    "apt_tiny.toml": (
        ["embeddings/tiny_apt.pt", "embeddings/tiny_apt-neg.pt"],
        lambda p: load_embedding(p).vectors,
    ),
}


def _start(example: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """The example, copied beside its pictures into the data dir's parent (a DreamBooth example makes its
    class images beside itself, never in the repository)."""
    job_dir = data_dir.parent / f"{data_dir.name}-job"
    if not job_dir.exists():
        shutil.copytree(REPO / "examples" / "images", job_dir / "images")
        shutil.copy(REPO / "examples" / example, job_dir / example)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    settings = [*SETTINGS, *EXTRA_SETTINGS.get(example, [])]
    command = [sys.executable, "-m", "liandan", "train", str(job_dir / example)]
    command += ["--data-dir", str(data_dir), *[a for s in settings for a in ("--set", s)]]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _logged_steps(data_dir: Path) -> int:
    """The last step in the run's loss log (0 before the first)."""
    last = 0
    # <logs>/<date>/<name>/<kind>_loss.csv; not rglob: the run's state folder is swapped while it saves
    for log in (data_dir / "textual_inversion").glob("*/*/*_loss.csv"):
        with log.open(newline="") as f:
            rows = [row for row in csv.reader(f) if row and row[0].isdigit()]
        last = max([last, *(int(row[0]) for row in rows)])
    return last


def _kill_at(process: subprocess.Popen[bytes], data_dir: Path, step: int) -> bool:
    """SIGKILL once the log shows `step`; False if the process ended first."""
    while process.poll() is None:
        if _logged_steps(data_dir) >= step:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    return False


def _finish(process: subprocess.Popen[bytes]) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]


def _tensors(example: str, data_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    files, read = EXAMPLES[example]
    return {name: read(data_dir / name) for name in files}


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_a_run_killed_at_random_steps_ends_bit_identical(example: str, tmp_path: Path) -> None:
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    _finish(_start(example, reference_dir))

    rng = random.Random(example)
    kills = 0
    for step in sorted(rng.sample(range(1, STEPS - 2), 2)):  # room left to strike before the end
        if _kill_at(_start(example, killed_dir), killed_dir, step):
            kills += 1
    _finish(_start(example, killed_dir))

    assert kills == 2
    expected, got = _tensors(example, reference_dir), _tensors(example, killed_dir)
    for name, tensors in expected.items():
        assert set(got[name]) == set(tensors)
        for key, value in tensors.items():
            assert torch.equal(got[name][key], value), f"{name}: {key} differs after the kills"
