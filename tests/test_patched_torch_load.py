"""Inside the WebUI, `torch.load` is A1111's checker (modules/safe.py sets `torch.load = load`), which refuses
the `.format_version` entries current torch writes and returns None. Every .pt we read must load the same way
there as outside: these tests replace `torch.load` as the WebUI does and read our files back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from liandan.formats.a1111_pickle import load_pt, save_pt_a1111
from liandan.train.checkpointing import LoopPosition, capture_rng, load_state, save_state


@pytest.fixture
def webui_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`torch.load` replaced by a checker that refuses every file, as A1111's does for current torch's."""
    refused: list[str] = []

    def checker(filename: object, *args: object, **kwargs: object) -> None:
        refused.append(str(filename))
        print(f"Error verifying pickled file from {filename}: The file may be malicious")

    monkeypatch.setattr(torch, "load", checker)
    return refused


def test_run_state_resumes_under_the_webui_checker(tmp_path: Path, webui_torch_load: list[str]) -> None:
    weight = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([weight])
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    folder = save_state(
        tmp_path,
        LoopPosition(step=7),
        {"w": weight},
        {"optimizer": optimizer.state_dict()},
        [capture_rng()],
        {"kind": "toy"},
    )
    state = load_state(folder)
    assert state.position.step == 7
    assert torch.equal(
        state.optimizer_state["optimizer"]["state"][0]["exp_avg"], optimizer.state[weight]["exp_avg"]
    )
    assert state.rng_per_process[0]
    assert webui_torch_load == []  # the checker never saw our files, so it printed no warning


def test_pt_files_load_under_the_webui_checker(tmp_path: Path, webui_torch_load: list[str]) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"x": torch.arange(3)}, plain)  # current torch's zip, with .format_version
    ours = save_pt_a1111({"y": torch.ones(2)}, tmp_path / "ours.pt")
    assert torch.equal(load_pt(plain)["x"], torch.arange(3))
    assert torch.equal(load_pt(ours)["y"], torch.ones(2))
    assert webui_torch_load == []
