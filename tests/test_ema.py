"""The loop's EMA of the trainable weights: the average is what is saved and previewed, the live weights
train on, and the average follows the hand-computed recurrence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_toy_method import ToyDataset, ToyMethod
from safetensors.torch import load_file

from liandan.errors import ConfigError
from liandan.jobs import TrainSpec
from liandan.progress import Control, Reporter
from liandan.train.ema import WeightAverage
from liandan.train.loop import train


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state["weight"].reshape(-1), state["bias"].reshape(-1)])


class _Watching(ToyMethod):
    def preview(self, prompt, seed, enabled):
        self.previewed = self.trainable_state()
        return super().preview(prompt, seed, enabled)


def test_the_saved_weights_are_the_average_of_the_trained_ones(tmp_path: Path) -> None:
    method = _Watching(tmp_path / "out")
    average = _flat(method.trainable_state())
    spec = TrainSpec(learn_rate="0.02", max_steps=6, save_every=0, ema_decay=0.7, ema_update_every=2)
    train(method, ToyDataset(8), spec, run_dir=tmp_path / "run", reporter=Reporter(lambda e: None),
          control=Control(), preview_prompt="p", tensorboard=False)  # fmt: skip
    for step, weights in enumerate(method.weights_after_step, start=1):
        if step % 2 == 0:
            average = 0.7 * average + 0.3 * weights
    saved = _flat(load_file(str(tmp_path / "out" / "toy.safetensors")))
    assert torch.allclose(saved, average, atol=1e-6)
    assert not torch.allclose(saved, method.weights_after_step[-1], atol=1e-4)
    assert torch.equal(_flat(method.trainable_state()), method.weights_after_step[-1])  # swapped back
    assert torch.equal(_flat(method.previewed), saved)  # the self-test renders the average


def test_swapping_trades_storage_and_restores_exactly() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([weight], decay=0.5, every=1)
    average.restart()
    with torch.no_grad():
        weight.add_(2.0)
    average.update(step=1)
    with average.swapped_in():
        assert weight.tolist() == [1.0, 1.0, 1.0]
    assert weight.tolist() == [2.0, 2.0, 2.0]
    restored = WeightAverage([weight], decay=0.5, every=1)
    restored.load_state_dict(average.state_dict())
    assert torch.equal(restored.shadow[0], average.shadow[0])
    restored.load_state_dict({})  # a state saved without an average starts one at the current weights
    assert torch.equal(restored.shadow[0], weight.detach())


def test_ema_with_schedule_free_is_refused() -> None:
    with pytest.raises(ConfigError, match="schedule-free already saves an average"):
        TrainSpec(optimizer="AdamWScheduleFree", ema_decay=0.9)
