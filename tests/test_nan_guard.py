"""The NaN guard's decisions, its advice and its one-read finiteness check (the loop-level behaviour is in
test_loop.py)."""

from __future__ import annotations

import math

import pytest
import torch

from liandan.errors import TrainingStopped
from liandan.train.nan_guard import (
    SKIPS_BEFORE_ROLLBACK,
    SNAPSHOT_MAX_BYTES,
    NanGuard,
    snapshot_fits_in_memory,
    step_status,
    to_cpu_copy,
)


def test_bad_steps_skip_then_roll_back_then_stop() -> None:
    guard = NanGuard("rollback", "no", in_memory=True)
    actions = []
    with pytest.raises(TrainingStopped, match=f"{2 * SKIPS_BEFORE_ROLLBACK} steps in a row"):
        for _ in range(10):
            actions.append(guard.bad_step(9, "the loss", 0.01))
    assert actions == ["skip", "skip", "rollback", "skip", "skip"]
    assert guard.rollbacks == 1 and guard.skipped == 4


def test_a_good_step_resets_the_count() -> None:
    guard = NanGuard("rollback", "no", in_memory=True)
    for _ in range(3):
        assert [guard.bad_step(1, "the loss", None) for _ in range(SKIPS_BEFORE_ROLLBACK - 1)] == ["skip"] * 2
        guard.good_step()
    assert guard.rollbacks == 0


def test_the_snapshot_is_a_cpu_copy_kept_only_in_memory_mode() -> None:
    weights = {"w": torch.ones(2)}
    guard = NanGuard("rollback", "no", in_memory=True)
    guard.remember(7, weights, {"optimizer": {"state": {0: {"m": torch.zeros(2)}}}})
    weights["w"] += 1
    assert guard.snapshot is not None and guard.snapshot.step == 7
    assert torch.equal(guard.snapshot.trainable["w"], torch.ones(2))
    for large in (NanGuard("rollback", "no", in_memory=False), NanGuard("stop", "no", in_memory=True)):
        large.remember(7, weights, {})
        assert large.snapshot is None


def test_stop_policy_and_fp16_advice() -> None:
    guard = NanGuard("stop", "fp16", in_memory=True)
    with pytest.raises(TrainingStopped) as caught:
        guard.bad_step(4, "a gradient", 0.5)
    message = str(caught.value)
    assert "a gradient is not finite (NaN/inf) at step 5" in message
    assert "lower the learning rate (it was 0.5)" in message
    assert "use bf16" in message and "VAE in fp16" in message


def test_size_threshold() -> None:
    floats = SNAPSHOT_MAX_BYTES // 4 // 3  # weights + Adam's two moments, float32
    assert snapshot_fits_in_memory([torch.nn.Parameter(torch.zeros(floats))])
    assert not snapshot_fits_in_memory([torch.nn.Parameter(torch.zeros(floats + 1))])


def test_step_status_reads_loss_and_gradient_finiteness_together() -> None:
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    assert step_status(torch.tensor(0.5), [p, q], True) == (0.5, True)  # no gradients yet
    p.grad, q.grad = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 3.0, 1.0])
    assert step_status(torch.tensor(0.5), [p, q], True) == (0.5, True)
    for bad in (float("inf"), float("-inf"), float("nan")):
        q.grad = torch.tensor([0.0, bad, 1.0])
        assert step_status(torch.tensor(0.5), [p, q], True) == (0.5, False)
        assert step_status(torch.tensor(0.5), [p, q], False) == (0.5, True)  # the grad scaler checks them
    loss, finite = step_status(torch.tensor(float("nan")), [p], True)
    assert math.isnan(loss) and not finite


def test_to_cpu_copy() -> None:
    grad = torch.tensor([1.0, 2.0])
    copied = to_cpu_copy({"a": [grad, (1, "x")]})
    assert copied["a"][1] == (1, "x") and copied["a"][0] is not grad and torch.equal(copied["a"][0], grad)


def test_only_a_fused_kernel_on_a_gpu_without_a_grad_scaler_steps_before_the_read() -> None:
    from liandan.train.nan_guard import pipelined_status

    weights = [torch.nn.Parameter(torch.zeros(4))]
    fused = torch.optim.AdamW(weights, fused=True)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert pipelined_status(fused, gpu, None, fused_backward=False)
    assert not pipelined_status(fused, cpu, None, fused_backward=False)  # nothing runs ahead on a CPU
    assert not pipelined_status(fused, gpu, object(), fused_backward=False)  # fp16: GradScaler's own flag
    assert not pipelined_status(fused, gpu, None, fused_backward=True)
    for unfused in (torch.optim.AdamW(weights, foreach=True), torch.optim.SGD(weights, lr=0.1)):
        assert not pipelined_status(unfused, gpu, None, fused_backward=False)


def test_the_fused_kernel_skips_a_flagged_step_entirely() -> None:
    from liandan.train.nan_guard import found_inf, status_values, step_unless_found_inf

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    weight.grad = torch.tensor([1.0, float("nan"), 1.0])
    step_unless_found_inf(optimizer, found_inf(status_values(torch.tensor(0.5), [weight], True)))
    assert torch.equal(weight.detach(), torch.ones(3)) and optimizer.state[weight]["step"] == 0
    assert not hasattr(optimizer, "found_inf")  # a later plain step() is not skipped by a stale flag
    weight.grad = torch.ones(3)
    step_unless_found_inf(optimizer, found_inf(status_values(torch.tensor(0.5), [weight], True)))
    assert not torch.equal(weight.detach(), torch.ones(3)) and optimizer.state[weight]["step"] == 1
