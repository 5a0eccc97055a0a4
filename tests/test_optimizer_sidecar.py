from __future__ import annotations

from pathlib import Path

import torch

from liandan.train.optimizer_sidecar import OptimizerSidecar


def _optimizer(*sizes: int) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(size)) for size in sizes], lr=0.1)


def test_a_fitting_sidecar_continues_and_one_that_does_not_is_named_and_skipped() -> None:
    trained = _optimizer(3)
    trained.param_groups[0]["params"][0].grad = torch.ones(3)
    trained.step()
    said: list[str] = []

    sidecar = OptimizerSidecar(said.append)
    assert sidecar.state_dict() is None  # nothing to write before the loop attached its optimizer
    fresh = _optimizer(3)
    sidecar.attach(fresh, trained.state_dict(), Path("cat.pt"))
    assert fresh.state_dict()["state"][0]["step"] == 1 and "continuing with" in said[-1]
    assert sidecar.state_dict() == fresh.state_dict()

    other = OptimizerSidecar(said.append)
    other.attach(_optimizer(3, 2), trained.state_dict(), Path("cat.pt"))
    assert "cat.pt.optim does not fit this optimizer" in said[-1]
    assert not other.state_dict()["state"]  # left as it was built
