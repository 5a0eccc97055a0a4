"""DreamBooth on two CPU processes through `accelerate launch`: the UNet and the text encoder go through
accelerate's prepare (DDP), rank 0 alone makes the class images and writes the checkpoint, and the run is one
coherent run (one CSV row per step, the class images made once, to the count)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_multiprocess_job import REPO_ROOT, train_on_two_processes

from liandan.formats.checkpoint import read_metadata
from liandan.models.tiny import write_tiny_models

STEPS = 3


@pytest.mark.slow
def test_accelerate_launch_runs_a_dreambooth_job_on_two_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tiny_models(data / "models" / "Stable-diffusion")
    images = (REPO_ROOT / "examples" / "images").as_posix()
    job = tmp_path / "job.toml"
    job.write_text(
        'kind = "dreambooth"\nname = "twodb"\ntrain_text_encoder = true\nsave_dtype = "fp32"\n'
        f'[[concepts]]\ninstance_folder = "{images}"\ninstance_prompt = "sks shape, [filewords]"\n'
        f'class_folder = "{(tmp_path / "class").as_posix()}"\nclass_prompt = "a shape"\n'
        "num_class_images = 3\nclass_steps = 1\n"
        f'[train]\nmax_steps = {STEPS}\nsave_every = 0\npreview_every = 0\nlearn_rate = "0.0001"\n'
        "[data]\nwidth = 64\nheight = 64\n"
        "[preview]\nsteps = 1\nwidth = 64\nheight = 64\nseed = 1\nself_test = false\n"
    )
    train_on_two_processes(job, data, timeout=900)

    final = data / "models" / "Stable-diffusion" / "twodb.safetensors"
    assert read_metadata(final)["liandan.trained"] == "unet,text_encoder"
    assert len(list((tmp_path / "class").glob("*.png"))) == 3
    (run_dir,) = (data / "textual_inversion").glob("*/twodb")
    with (run_dir / "dreambooth_loss.csv").open(newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, STEPS + 1))
