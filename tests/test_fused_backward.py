"""Fused backward: the same training as the plain optimizer, without the whole gradient ever existing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from helpers_toy_method import CHANNELS, ToyDataset, ToyMethod
from test_loop import _UnusedGroup

from liandan.errors import ConfigError, TrainingStopped
from liandan.jobs import TrainSpec
from liandan.progress import Control, Reporter
from liandan.train.loop import train


class _Deeper(ToyMethod):
    """Three convs (six tensors) and a watch on the gradients alive whenever one is complete."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir, global_rng=False)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(*(torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1) for _ in range(3)))
        self.forward_net = self.net
        self.most_live_gradients = 0
        self._watching = False

    def _count(self, _: torch.Tensor) -> None:
        live = sum(p.grad is not None for p in self.net.parameters())
        self.most_live_gradients = max(self.most_live_gradients, live)

    def loss(self, batch):
        if not self._watching:  # after the loop's own hooks, so it sees what they left
            self._watching = True
            for p in self.net.parameters():
                p.register_post_accumulate_grad_hook(self._count)
        return super().loss(batch)


def _train(tmp_path: Path, spec: TrainSpec, method: ToyMethod | None = None) -> tuple[ToyMethod, list[float]]:
    method = method or _Deeper(tmp_path / "out")
    train(method, ToyDataset(8), spec, run_dir=tmp_path / "run", reporter=Reporter(lambda e: None),
          control=Control(), tensorboard=False)  # fmt: skip
    with (tmp_path / "run" / "loss.csv").open(newline="") as f:
        return method, [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("clip", ["disabled", "value"])
def test_fused_backward_trains_as_the_plain_optimizer_with_one_gradient_at_a_time(
    tmp_path: Path, clip: str
) -> None:
    spec = TrainSpec(learn_rate="0.01:4, 0.005:8", max_steps=8, save_every=0, batch_size=2,
                     clip_grad_mode=clip, clip_grad_value="0.05", lr_scheduler="a1111")  # fmt: skip
    plain, plain_losses = _train(tmp_path / "plain", spec)
    fused, fused_losses = _train(tmp_path / "fused", spec.replace(fused_backward=True))
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-7)
    assert plain_losses[-1] < plain_losses[0]
    for a, b in zip(plain.net.parameters(), fused.net.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert plain.most_live_gradients == 6  # all six gradients at once
    assert fused.most_live_gradients == 0  # each freed by its own step before the next is complete
    assert all(p.grad is None for p in fused.net.parameters())


def test_fused_backward_leaves_no_hooks_on_the_model(tmp_path: Path) -> None:
    method = ToyMethod(tmp_path / "out")
    _train(tmp_path, TrainSpec(max_steps=2, save_every=0, fused_backward=True), method=method)
    before = method.net.weight.detach().clone()
    method.net(torch.randn(1, CHANNELS, 8, 8)).sum().backward()
    assert method.net.weight.grad is not None  # nobody stepped and freed it
    assert torch.equal(method.net.weight.detach(), before)


def test_the_audit_sees_the_gradients_a_fused_backward_frees(tmp_path: Path) -> None:
    with pytest.raises(TrainingStopped, match="'text_encoder' received no gradient at step 1"):
        _train(tmp_path, TrainSpec(max_steps=3, fused_backward=True), method=_UnusedGroup(tmp_path / "out"))


def test_a_non_finite_loss_never_reaches_a_fused_step(tmp_path: Path) -> None:
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={2})
    _, losses = _train(tmp_path, TrainSpec(max_steps=3, save_every=0, fused_backward=True), method=method)
    assert len(losses) == 3 and method.loss_calls == 4  # the bad batch was skipped, not stepped on
    assert all(torch.isfinite(w).all() for w in method.weights_after_step)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"gradient_accumulation": 2}, "gradient_accumulation > 1"),
        ({"clip_grad_mode": "norm"}, "clip_grad_mode 'norm'"),
        ({"mixed_precision": "fp16"}, "mixed_precision 'fp16'"),
        ({"optimizer": "Prodigy"}, "optimizer Prodigy"),
    ],
)
def test_what_cannot_fuse_is_refused_with_its_name(setting: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=f"does not work with {named}"):
        TrainSpec(fused_backward=True, **setting)


def test_fused_backward_on_several_processes_is_refused(tmp_path: Path) -> None:
    class TwoProcesses:  # what the loop reads of an Accelerator before it refuses
        num_processes, process_index, gradient_accumulation_steps = 2, 0, 1
        is_main_process, device = True, torch.device("cpu")

    with pytest.raises(ConfigError, match="fused_backward needs one process"):
        train(ToyMethod(tmp_path / "out"), ToyDataset(8), TrainSpec(fused_backward=True), run_dir=tmp_path,
              reporter=Reporter(lambda e: None), control=Control(), accelerator=TwoProcesses())  # fmt: skip
