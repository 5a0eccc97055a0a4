"""Every optimizer a TrainSpec can name runs on CPU tensors and moves the weights the right way."""

from __future__ import annotations

import sys

import pytest
import torch

from liandan.errors import ConfigError
from liandan.train.method import ParamGroup
from liandan.train.optimizers import OPTIMIZERS, build_optimizer, set_learning_rate, set_optimizer_mode


def quadratic_descent(name: str, steps: int = 20) -> tuple[float, float]:
    torch.manual_seed(0)
    # 8-bit optimizers quantize only tensors of >= 4096 elements: use one that big.
    weight = torch.nn.Parameter(torch.randn(64, 64) + 3.0)
    lr = 1.0 if name == "Prodigy" else 0.05  # Prodigy's rate multiplies its own step-size estimate
    optimizer = build_optimizer(name, [ParamGroup("w", [weight])], base_lr=lr, weight_decay=0.0)
    set_optimizer_mode(optimizer, training=True)  # schedule-free steps only in train mode
    start = float((weight.detach() ** 2).mean())
    for _ in range(steps):
        loss = (weight**2).sum() / 64
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return start, float((weight.detach() ** 2).mean())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_lowers_a_quadratic_on_cpu(name: str) -> None:
    start, end = quadratic_descent(name, steps=20 if name != "SGD" else 200)
    assert end < 0.9 * start


def _8bit_state_dtypes(name: str, say=lambda message: None) -> set[torch.dtype]:
    weight = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = build_optimizer(name, [ParamGroup("w", [weight])], 1e-3, 0.0, say=say)
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    # torchao keeps its 8-bit codes inside a tensor subclass; `.codes` is what it stores
    return {getattr(t, "codes", t).dtype for t in optimizer.state[weight].values() if torch.is_tensor(t)}


@pytest.mark.parametrize("name", ["AdamW8bit", "AdamW8bitTorchao"])
def test_8bit_optimizers_keep_8bit_state(name: str) -> None:
    assert torch.uint8 in _8bit_state_dtypes(name)


def test_adamw8bit_falls_back_to_torchao_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    _8bit_state_dtypes("AdamW8bit", said.append)
    assert said == ["optimizer AdamW8bit: bitsandbytes' AdamW8bit"]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    said.clear()
    assert torch.uint8 in _8bit_state_dtypes("AdamW8bit", said.append)
    assert len(said) == 1 and "bitsandbytes is not usable" in said[0] and "torchao's AdamW8bit" in said[0]


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [
        ("Prodigy", "prodigyopt", "prodigyopt"),
        ("AdamWScheduleFree", "schedulefree", "schedulefree"),
        ("AdamW8bitTorchao", "torchao", "torchao"),
    ],
)
def test_a_missing_optimizer_package_names_its_pip_install(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str, package: str
) -> None:
    for loaded in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match=f"pip install {package}"):
        build_optimizer(name, [ParamGroup("w", [weight])], 1.0, 0.0)


def test_schedule_free_switches_its_weights_between_train_and_eval_points() -> None:
    weight = torch.nn.Parameter(torch.ones(8))
    optimizer = build_optimizer("AdamWScheduleFree", [ParamGroup("w", [weight])], 0.1, 0.0)
    set_optimizer_mode(optimizer, training=True)
    for _ in range(3):
        (weight**2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    training_point = weight.detach().clone()
    set_optimizer_mode(optimizer, training=False)
    assert not torch.allclose(weight, training_point)
    set_optimizer_mode(optimizer, training=True)
    assert torch.allclose(weight, training_point, atol=1e-6)
    set_optimizer_mode(torch.optim.SGD([weight], lr=0.1), training=False)  # one point: nothing happens


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
        build_optimizer("Adam9bit", [ParamGroup("w", [weight])], 1.0, 0.0)
    weight.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable tensors"):
        build_optimizer("AdamW", [ParamGroup("w", [weight])], 1.0, 0.0)


def test_missing_bitsandbytes_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        build_optimizer("Lion8bit", [ParamGroup("w", [weight])], 1.0, 0.0)


def _adamw_steps(fused: bool, state: dict | None = None, steps: int = 3) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 32))
    optimizer = torch.optim.AdamW([weight], lr=0.01, fused=fused)
    if state is not None:
        optimizer.load_state_dict(state)
    for _ in range(steps):
        (weight**2).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return weight.detach(), optimizer.state_dict()


def test_adamw_is_the_fused_kernel_where_the_tensors_allow_and_its_state_resumes_either_way() -> None:
    plain = ParamGroup("p", [torch.nn.Parameter(torch.zeros(4))])
    assert build_optimizer("AdamW", [plain], 0.01, 0.0).defaults["fused"]
    mixed = ParamGroup("d", [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2).double())])
    assert build_optimizer("AdamW", [mixed], 0.01, 0.0).defaults["fused"]  # float64 is fused too
    meta = ParamGroup("m", [torch.nn.Parameter(torch.zeros(4, device="meta"))])
    assert not build_optimizer("AdamW", [meta], 0.01, 0.0).defaults["fused"]
    # the same steps as the per-tensor loop, and a state saved by one resumes in the other
    fused_weight, fused_state = _adamw_steps(fused=True)
    plain_weight, plain_state = _adamw_steps(fused=False)
    torch.testing.assert_close(fused_weight, plain_weight)
    resumed_in_plain, _ = _adamw_steps(fused=False, state=fused_state, steps=2)
    resumed_in_fused, _ = _adamw_steps(fused=True, state=plain_state, steps=2)
    torch.testing.assert_close(resumed_in_plain, resumed_in_fused)
