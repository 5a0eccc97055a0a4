"""`python -m liandan generate` with and without an aesthetic embedding (methods/aesthetic.py, cli.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liandan import cli
from liandan.host.standalone import StandaloneHost
from liandan.jobs import AestheticJob, AestheticSettings, GenerateSpec
from liandan.methods.aesthetic import GenerateSession, generate_image, run_aesthetic_job
from liandan.progress import Control, Reporter

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
BASE = ["--prompt", "a red cat", "--width", "64", "--height", "64", "--steps", "4", "--seed", "3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    run_aesthetic_job(AestheticJob(name="look", folder=IMAGES), StandaloneHost(data), Reporter(), Control())
    return data


def render(data_dir: Path, tmp_path: Path, *options: str) -> tuple[np.ndarray, str]:
    out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
    assert cli.main(["generate", *BASE, "--data-dir", str(data_dir), "--out", str(out), *options]) == 0
    image = Image.open(out)
    return np.asarray(image.convert("RGB"), dtype=np.int16), image.info["parameters"]


def test_aesthetic_changes_the_image_and_weight_or_steps_zero_is_bit_identical(data_dir, tmp_path) -> None:
    plain, plain_info = render(data_dir, tmp_path)
    steered, info = render(data_dir, tmp_path, "--aesthetic", "look", "--aesthetic-lr", "0.005")
    assert np.abs(steered - plain).max() > 0
    assert "Aesthetic embedding: look, Aesthetic LR: 0.005, Aesthetic weight: 0.9, Aesthetic steps: 5" in info
    assert info.startswith(plain_info)  # the same parameters, with ours appended
    for off in (["--aesthetic-weight", "0"], ["--aesthetic-steps", "0"]):
        same, off_info = render(data_dir, tmp_path, "--aesthetic", "look", *off)
        assert np.array_equal(same, plain) and off_info == plain_info


def test_a_session_reuses_the_adapted_prompt(data_dir, tmp_path) -> None:
    host, session = StandaloneHost(data_dir), GenerateSession()
    spec = GenerateSpec(prompt="a cat", width=64, height=64, steps=2, aesthetic="look",
                        aesthetic_settings=AestheticSettings(learn_rate=0.001))  # fmt: skip
    first = generate_image(spec.replace(out=tmp_path / "a.png"), host, session)
    second = generate_image(spec.replace(out=tmp_path / "b.png"), host, session)
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    (conditioner,) = session._conditioners.values()
    assert conditioner.adaptations == 1


def test_bad_input_is_a_clear_error(data_dir, tmp_path, capsys) -> None:
    assert cli.main(["generate", *BASE, "--data-dir", str(data_dir), "--aesthetic", "nope"]) == cli.EXIT_ERROR
    error = capsys.readouterr().err
    assert "no aesthetic embedding 'nope'" in error and "(there: look)" in error
    assert cli.main(["generate", *BASE, "--data-dir", str(data_dir), "--aesthetic-lr", "2"]) == cli.EXIT_ERROR
    assert "learn_rate = 2.0 is out of range" in capsys.readouterr().err
