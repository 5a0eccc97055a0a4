"""The NaN guard's decisions and its advice (the loop-level behaviour is in test_loop.py)."""

from __future__ import annotations

import pytest
import torch

from liandan.errors import TrainingStopped
from liandan.train.nan_guard import MAX_ROLLBACKS_IN_A_ROW, NanGuard, grads_are_finite, to_cpu_copy


def test_rollback_returns_the_snapshot_until_too_many_in_a_row() -> None:
    guard = NanGuard("rollback", "no")
    weights = {"w": torch.ones(2)}
    guard.remember(7, weights, {"optimizer": {"state": {0: {"m": torch.zeros(2)}}}})
    weights["w"] += 1  # the snapshot is a copy
    for _ in range(MAX_ROLLBACKS_IN_A_ROW):
        snapshot = guard.bad_step(9, "the loss", 0.01)
        assert snapshot.step == 7 and torch.equal(snapshot.trainable["w"], torch.ones(2))
    with pytest.raises(TrainingStopped, match="3 rollbacks in a row"):
        guard.bad_step(9, "the loss", 0.01)
    assert guard.rollbacks == MAX_ROLLBACKS_IN_A_ROW


def test_a_good_step_resets_the_count() -> None:
    guard = NanGuard("rollback", "no")
    guard.remember(0, {}, {})
    for _ in range(2 * MAX_ROLLBACKS_IN_A_ROW):  # more bad steps than the limit, never in a row
        assert guard.bad_step(1, "the loss", None).step == 0
        guard.good_step()
        assert guard.bad_in_a_row == 0
    assert guard.rollbacks == 2 * MAX_ROLLBACKS_IN_A_ROW


def test_stop_policy_and_fp16_advice() -> None:
    guard = NanGuard("stop", "fp16")
    guard.remember(0, {}, {})
    with pytest.raises(TrainingStopped) as caught:
        guard.bad_step(4, "a gradient", 0.5)
    message = str(caught.value)
    assert "a gradient is not finite (NaN/inf) at step 5" in message
    assert "lower the learning rate (it was 0.5)" in message
    assert "use bf16" in message and "VAE in fp16" in message


def test_no_snapshot_means_stop() -> None:
    with pytest.raises(TrainingStopped, match="no good state"):
        NanGuard("rollback", "no").bad_step(0, "the loss", 0.1)


def test_helpers() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    assert grads_are_finite([p])  # no gradient yet
    p.grad = torch.tensor([1.0, float("inf")])
    assert not grads_are_finite([p])
    copied = to_cpu_copy({"a": [p.grad, (1, "x")]})
    assert copied["a"][1] == (1, "x") and copied["a"][0] is not p.grad
