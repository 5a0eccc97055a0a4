"""Every optimizer a TrainSpec can name runs on CPU tensors and moves the weights the right way."""

from __future__ import annotations

import sys
from typing import get_args

import pytest
import torch

from liandan.errors import ConfigError
from liandan.jobs import Optimizer
from liandan.train.method import ParamGroup
from liandan.train.optimizers import OPTIMIZERS, build_optimizer, set_learning_rate


def quadratic_descent(name: str, steps: int = 20) -> tuple[float, float]:
    torch.manual_seed(0)
    # 8-bit optimizers quantize only tensors of >= 4096 elements: use one that big.
    weight = torch.nn.Parameter(torch.randn(64, 64) + 3.0)
    optimizer = build_optimizer(name, [ParamGroup("w", [weight])], base_lr=0.05, weight_decay=0.0)
    start = float((weight.detach() ** 2).mean())
    for _ in range(steps):
        loss = (weight**2).sum() / 64
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return start, float((weight.detach() ** 2).mean())


def test_the_job_spec_offers_exactly_the_optimizers_that_exist() -> None:
    """jobs.Optimizer (a Literal, for typing and validation) and OPTIMIZERS (what builds) must not drift."""
    assert get_args(Optimizer) == OPTIMIZERS


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_lowers_a_quadratic_on_cpu(name: str) -> None:
    start, end = quadratic_descent(name, steps=20 if name != "SGD" else 200)
    assert end < 0.9 * start


def test_8bit_optimizer_keeps_8bit_state() -> None:
    weight = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = build_optimizer("AdamW8bit", [ParamGroup("w", [weight])], 1e-3, 0.0)
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    assert any(t.dtype == torch.uint8 for t in optimizer.state[weight].values() if torch.is_tensor(t))


def test_group_lr_scale_and_weight_decay_override() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    groups = [ParamGroup("a", [a]), ParamGroup("b", [b], lr_scale=0.1, weight_decay=0.5)]
    optimizer = build_optimizer("AdamW", groups, base_lr=1.0, weight_decay=0.01)
    set_learning_rate(optimizer, 2.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.0, 0.2])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.5]


def test_unknown_name_and_frozen_groups_are_refused() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="unknown; expected one of: AdamW"):
        build_optimizer("Prodigy", [ParamGroup("w", [weight])], 1.0, 0.0)
    weight.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable tensors"):
        build_optimizer("AdamW", [ParamGroup("w", [weight])], 1.0, 0.0)


def test_missing_bitsandbytes_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        build_optimizer("Lion8bit", [ParamGroup("w", [weight])], 1.0, 0.0)
