"""The optimizers a TrainSpec can name, built from a method's parameter groups.

Each group's learning rate is `base rate x lr_scale`; the loop sets `group["lr"]` before every step from the
schedule, so the rate passed here only matters for optimizers that read it at construction.

- "Prodigy" estimates the step size itself (d-adaptation): its learning rate is a multiplier of that
  estimate, about 1.0 (learn_rate = "1"). The estimate lives in the param groups, so it is part of the
  optimizer's state_dict and survives a full-state resume.
- "AdamWScheduleFree" keeps two points: the one the gradient is taken at (train mode) and the average that
  is evaluated and saved (eval mode). The loop switches with `set_optimizer_mode` around previews,
  validation and saves; no lr decay is needed.
- "AdamW8bit" is bitsandbytes' where it loads, else torchao's; "AdamW8bitTorchao" is always torchao's.
- "AdamW" is torch's fused kernel wherever the tensors allow it (CPU and CUDA floating point): one pass over
  each tensor instead of a dozen, about 4x faster than the default per-tensor loop for a UNet on the CPU (see
  bench/RESULTS.md), with the same state_dict layout, so a state saved by either kind resumes in the other.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, get_args

from liandan.errors import ConfigError
from liandan.jobs import Optimizer

if TYPE_CHECKING:
    import torch

    from liandan.train.method import ParamGroup

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)  # the job spec's choices, one list


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


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """torchao's import logs a torch pytree deprecation warning and warns about its tensor subclasses:
    noise for a user who only picked an optimizer."""
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree_log.setLevel(level)


def _torchao_adamw8bit() -> Any:
    import torch

    with _quiet_import():
        try:
            from torchao.optim import AdamW8bit  # torchao >= 0.11
        except ImportError:
            try:
                from torchao.prototype.low_bit_optim import AdamW8bit  # older torchao
            except ImportError:
                raise ConfigError("optimizer AdamW8bitTorchao needs torchao: `pip install torchao`") from None
        except (OSError, RuntimeError, AttributeError) as error:  # built for another torch release
            raise ConfigError(
                f"torchao does not load with torch {torch.__version__} ({error}); install the torchao "
                "release made for it (see torchao's compatibility table)"
            ) from error
    return AdamW8bit


def _adamw8bit(say: Callable[[str], None]) -> Any:
    """bitsandbytes' AdamW8bit, or torchao's when bitsandbytes is missing or fails to load."""
    from liandan.private_packages import import_private

    try:
        optimizer_class = import_private("bitsandbytes").optim.AdamW8bit
    except (ImportError, OSError, RuntimeError, AttributeError) as error:
        try:
            optimizer_class = _torchao_adamw8bit()
        except ConfigError:
            raise ConfigError(
                "optimizer AdamW8bit needs bitsandbytes or torchao: `pip install bitsandbytes` "
                "(or `pip install torchao`)"
            ) from None
        say(f"optimizer AdamW8bit: bitsandbytes is not usable ({error}); using torchao's AdamW8bit")
        return optimizer_class
    say("optimizer AdamW8bit: bitsandbytes' AdamW8bit")
    return optimizer_class


def _optional_class(module: str, name: str, package: str, optimizer: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ConfigError(f"optimizer {optimizer} needs {package}: `pip install {package}`") from None


def build_optimizer(
    name: str,
    groups: list[ParamGroup],
    base_lr: float,
    weight_decay: float,
    say: Callable[[str], None] = lambda message: None,
) -> torch.optim.Optimizer:
    """`name` is one of OPTIMIZERS; a group's own weight_decay overrides `weight_decay`. `say` hears
    which implementation was chosen where there is a choice (AdamW8bit)."""
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
        params = [p for group in param_groups for p in group["params"]]
        return torch.optim.AdamW(param_groups, lr=base_lr, fused=fused_kernel_supported(params))
    if name == "SGD":
        return torch.optim.SGD(param_groups, lr=base_lr)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        # A fixed external rate: without these flags Adafactor picks its own relative step size.
        return Adafactor(
            param_groups, lr=base_lr, scale_parameter=False, relative_step=False, warmup_init=False
        )
    if name == "Prodigy":
        # it refuses a default rate of 0 (the loop builds with 0); each group's own "lr" is what it uses
        return _optional_class("prodigyopt", "Prodigy", "prodigyopt", name)(param_groups, lr=1.0)
    if name == "AdamWScheduleFree":
        optimizer_class = _optional_class("schedulefree", "AdamWScheduleFree", "schedulefree", name)
        return optimizer_class(param_groups, lr=base_lr)
    if name == "AdamW8bitTorchao":
        return _torchao_adamw8bit()(param_groups, lr=base_lr)
    if name == "AdamW8bit":
        return _adamw8bit(say)(param_groups, lr=base_lr)
    bnb_optim = _bitsandbytes_optim()
    optimizer_class = {"Lion": bnb_optim.Lion, "Lion8bit": bnb_optim.Lion8bit}[name]
    return optimizer_class(param_groups, lr=base_lr)


FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = ("float16", "bfloat16", "float32", "float64")


def fused_kernel_supported(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused optimizer kernels take these tensors: plain (not subclassed) floating-point
    tensors on one of FUSED_DEVICES."""
    import torch

    return all(
        type(p.data) is torch.Tensor
        and p.device.type in FUSED_DEVICES
        and str(p.dtype).removeprefix("torch.") in FUSED_DTYPES
        for p in params
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    import torch

    for group in optimizer.param_groups:
        rate = base_lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], torch.Tensor):  # torchao's: its compiled step reads a tensor
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate


def set_optimizer_mode(optimizer: Any, training: bool) -> None:
    """Put a schedule-free optimizer's weights at its training point (True) or at its average, the weights
    to evaluate and save (False); other optimizers have one point and nothing happens. `optimizer` may be
    accelerate's wrapper, whose `.optimizer` is the real one."""
    inner = getattr(optimizer, "optimizer", optimizer)
    switch = getattr(inner, "train" if training else "eval", None)
    if callable(switch):
        switch()
