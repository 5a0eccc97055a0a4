"""Full-state checkpoints: round trip, RNG restore, safe loading, crash-safe swap, clear errors."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from liandan.errors import CheckpointError
from liandan.train.checkpointing import (
    LoopPosition,
    capture_rng,
    find_state,
    load_state,
    preserved_rng,
    restore_rng,
    save_state,
    spec_differences,
)


def draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def saved(tmp_path: Path, step: int = 5) -> Path:
    weight = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = torch.optim.AdamW([weight])
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    position = LoopPosition(step=step, epoch=1, batch_index=2, best_epoch_loss=0.5, method_kind="toy")
    job = {"kind": "toy", "train": {"learn_rate": "0.01", "max_steps": 10}}
    return save_state(
        tmp_path, position, {"w": weight}, {"optimizer": optimizer.state_dict()}, [capture_rng()], job
    )


def test_round_trip(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    state = load_state(folder)
    assert (
        state.position.step == 5 and state.position.batch_index == 2 and state.position.best_epoch_loss == 0.5
    )
    assert set(state.trainable) == {"w"}
    assert state.optimizer_state["optimizer"]["state"][0]["exp_avg"].shape == (4, 4)
    assert state.job_spec == {"kind": "toy", "train": {"learn_rate": "0.01", "max_steps": 10}}
    assert sorted(p.name for p in folder.iterdir()) == [
        "job.json",
        "meta.json",
        "optimizer.pt",
        "rng.pt",
        "trainable.safetensors",
    ]


def test_files_load_without_pickled_code(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    for name in ("optimizer.pt", "rng.pt"):
        torch.load(folder / name, weights_only=True)  # would raise on any non-allowlisted global
        with zipfile.ZipFile(folder / name) as z:
            pickle_bytes = next(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
        assert b"cnumpy" not in pickle_bytes  # no numpy global in the pickle


def test_rng_restore_replays_the_same_numbers() -> None:
    state = capture_rng()
    first = draw()
    restore_rng(state)
    second = draw()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_preserved_rng_shields_side_work() -> None:
    state = capture_rng()
    with preserved_rng():
        draw()
    after = draw()
    restore_rng(state)
    assert after[:2] == draw()[:2]


def test_only_the_last_state_is_kept_and_a_half_swap_falls_back(tmp_path: Path) -> None:
    saved(tmp_path, step=1)
    saved(tmp_path, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    # A crash between the two renames of a save: `state` gone, `state.old` complete.
    (tmp_path / "state").rename(tmp_path / "state.old")
    folder = find_state(tmp_path)
    assert folder == tmp_path / "state.old" and load_state(folder).position.step == 2
    assert find_state(tmp_path / "nothing") is None


def test_damaged_state_gives_a_clear_error(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    (folder / "optimizer.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="delete that folder"):
        load_state(folder)


def test_a_state_without_a_job_file_still_loads(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    (folder / "job.json").unlink()  # written by an earlier liandan
    assert load_state(folder).job_spec is None


def test_spec_differences_name_what_changed_but_not_how_long() -> None:
    old = {"kind": "ti", "name": "cat", "train": {"learn_rate": "0.01", "max_steps": 10, "seed": 0},
           "data": {"folder": "/a"}, "extra_data": [], "preview": {"seed": 1}}  # fmt: skip
    new = {"kind": "ti", "name": "cat", "train": {"learn_rate": "0.02", "max_steps": 99, "seed": 0},
           "data": {"folder": "/b", "weight": 2.0}, "extra_data": [{"folder": "/c"}],
           "preview": {"seed": 2}}  # fmt: skip
    assert spec_differences(old, new) == [
        "data.folder: '/a' -> '/b'",
        "data.weight: (not set) -> 2.0",
        "extra_data.0.folder: (not set) -> '/c'",
        "train.learn_rate: '0.01' -> '0.02'",
    ]
    assert spec_differences(old, old) == []
    # how fast it runs is no change to what trains, also for a run saved before these settings existed
    faster = {**old, "train": {**old["train"], "cpu_threads": 1, "torch_compile": True, "data_workers": 2}}
    assert spec_differences(old, faster) == []
