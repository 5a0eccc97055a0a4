"""The optimizers a TrainSpec can name, built from a method's parameter groups.

Each group's learning rate is `base rate x lr_scale`; the loop sets `group["lr"]` before every step from the
schedule, so the rate passed here only matters for optimizers that read it at construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from liandan.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from liandan.train.method import ParamGroup

OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Lion8bit", "Adafactor", "SGD")


def _bitsandbytes_optim() -> Any:
    from liandan.private_packages import import_private

    try:
        bitsandbytes = import_private("bitsandbytes")  # inside the WebUI: install.py's private copy
    except ImportError:
        raise ConfigError(
            "the 8-bit optimizers and Lion need bitsandbytes: `pip install bitsandbytes` "
            "(or choose optimizer AdamW, Adafactor or SGD)"
        ) from None
    return bitsandbytes.optim


def build_optimizer(
    name: str, groups: list[ParamGroup], base_lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """`name` is one of OPTIMIZERS; a group's own weight_decay overrides `weight_decay`."""
    import torch

    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer {name!r} is unknown; expected one of: {', '.join(OPTIMIZERS)}")
    param_groups = []
    for group in groups:
        params = [p for p in group.params if p.requires_grad]
        if not params:
            raise ConfigError(
                f"parameter group {group.name!r} has no trainable tensors (requires_grad is off)"
            )
        decay = weight_decay if group.weight_decay is None else group.weight_decay
        param_groups.append(
            {
                "params": params,
                "lr": base_lr * group.lr_scale,
                "weight_decay": decay,
                "lr_scale": group.lr_scale,
            }
        )
    if not param_groups:
        raise ConfigError("the method has no trainable parameters")

    if name == "AdamW":
        return torch.optim.AdamW(param_groups, lr=base_lr)
    if name == "SGD":
        return torch.optim.SGD(param_groups, lr=base_lr)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        # A fixed external rate: without these flags Adafactor picks its own relative step size.
        return Adafactor(
            param_groups, lr=base_lr, scale_parameter=False, relative_step=False, warmup_init=False
        )
    bnb_optim = _bitsandbytes_optim()
    optimizer_class = {
        "AdamW8bit": bnb_optim.AdamW8bit,
        "Lion": bnb_optim.Lion,
        "Lion8bit": bnb_optim.Lion8bit,
    }[name]
    return optimizer_class(param_groups, lr=base_lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0)
