"""`python -m liandan convert`: single-file checkpoint -> diffusers folder -> single-file checkpoint gives the
same tensors (SD1, SD2, SDXL), --dtype casts, and nothing is replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from liandan import cli
from liandan.errors import CheckpointError
from liandan.models.convert import convert
from liandan.models.loading import load_bundle
from liandan.models.saving import save_checkpoint
from liandan.models.tiny import tiny_bundle


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_round_trip_through_a_diffusers_folder_is_exact(family: str, tmp_path: Path) -> None:
    source = save_checkpoint(tiny_bundle(family), tmp_path / "source.safetensors")
    folder = convert(source, tmp_path / "folder")
    assert (folder / "model_index.json").is_file()
    loaded = load_bundle(folder)
    assert (loaded.family, loaded.prediction_type) == (
        family,
        "v_prediction" if family == "sd2" else "epsilon",
    )
    back = convert(folder, tmp_path / "back.safetensors")
    a, b = _tensors(source), _tensors(back)
    assert set(a) == set(b)
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_the_cli_casts_and_refuses_to_replace(tmp_path: Path, capsys) -> None:
    source = save_checkpoint(tiny_bundle("sd1"), tmp_path / "source.safetensors")
    assert cli.main(["convert", str(source), str(tmp_path / "half.safetensors"), "--dtype", "bf16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (
        _tensors(tmp_path / "half.safetensors")["model.diffusion_model.out.2.weight"].dtype == torch.bfloat16
    )
    assert cli.main(["convert", str(source), str(tmp_path / "half.safetensors")]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no such file"):
        convert(tmp_path / "missing.safetensors", tmp_path / "x")
