"""Transforms of the K and V inputs of a UNet's attention layers, as A1111 applies hypernetworks.

For every attention layer whose K/V input width has a transform (the text context of cross-attention, the
hidden states of self-attention), the inputs of `to_k` and `to_v` become `x + f(x) * strength`, each
transform applied to the output of the previous one; Q is untouched. This is a diffusers attention
processor installed per layer (keyed by module path) and removed exactly by `KVTransformHandle.remove()`.

The text context is the same tensor in every cross-attention layer, so its K/V inputs are the same in
every cross-attention layer with the same transforms: they are computed once per UNet forward, by a forward
pre-hook on the UNet (A1111 recomputes them in each layer). The hook runs outside every block, so gradient
checkpointing (non-reentrant, as diffusers does it) sees the same work in its recompute as in the forward;
the last forward's values are kept until the next one, for that recompute. A processor whose context is not
the tensor the UNet was given (a model that projects it first) computes its own, and so does every layer of
a transform that draws dropout while training: each layer gets its own mask, as in A1111.

The processor computes attention itself with torch's scaled_dot_product_attention, following diffusers'
`AttnProcessor2_0` step by step, so the result does not depend on the diffusers version and, with strength
0, is bit-identical to the stock processor. It holds the transforms' modules without registering them in
the UNet: the UNet's state_dict, parameters and `requires_grad` stay as they were, and the transforms'
owner (a hypernetwork) keeps its own parameters for training and saving. Each function gets its input in
its parameters' dtype, read when the transforms are installed (not per call: on the tiny model's small
layers that lookup and the multiply by strength 1 were a third of a transform's forward).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

Function = Callable[[torch.Tensor], torch.Tensor]
KVFunctions = tuple[Function, Function]


@runtime_checkable
class KVTransform(Protocol):
    """What the hook needs from a hypernetwork: per-width K and V functions, and a live strength."""

    strength: float

    def kv_modules(self, width: int) -> KVFunctions | None:
        """(k_fn, v_fn) for K/V inputs `width` wide, or None to leave such layers alone.

        Each maps [batch, tokens, width] to the same shape; the hook adds `f(x) * strength` to `x`.
        """
        ...


def _parameter_dtype(fn: Function) -> torch.dtype | None:
    """The dtype of a module's (first) parameter, or None: what its input is cast to."""
    param = next(iter(fn.parameters()), None) if isinstance(fn, nn.Module) else None
    return None if param is None else param.dtype


@dataclass(frozen=True)
class _Stage:
    """One transform's functions for one layer, with their parameter dtypes, read once when installed."""

    transform: KVTransform
    k_fn: Function
    v_fn: Function
    k_dtype: torch.dtype | None
    v_dtype: torch.dtype | None

    @classmethod
    def of(cls, transform: KVTransform, k_fn: Function, v_fn: Function) -> _Stage:
        return cls(transform, k_fn, v_fn, _parameter_dtype(k_fn), _parameter_dtype(v_fn))


def _add_scaled(fn: Function, dtype: torch.dtype | None, x: torch.Tensor, strength: float) -> torch.Tensor:
    """x + fn(x) * strength, feeding fn its own parameter dtype (a float32 hypernetwork on an fp16 UNet).
    At strength 1 (training) without the multiply, which changes no bit of the result."""
    delta = fn(x if dtype is None else x.to(dtype)).to(x.dtype)
    return x + delta if strength == 1.0 else x + delta * strength


def _transform_kv(stages: tuple[_Stage, ...], context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key_input = value_input = context
    for stage in stages:
        strength = float(stage.transform.strength)
        if strength == 0.0:
            continue
        key_input = _add_scaled(stage.k_fn, stage.k_dtype, key_input, strength)
        value_input = _add_scaled(stage.v_fn, stage.v_dtype, value_input, strength)
    return key_input, value_input


def _draws_dropout(stages: tuple[_Stage, ...]) -> bool:
    functions = [fn for stage in stages for fn in (stage.k_fn, stage.v_fn) if isinstance(fn, nn.Module)]
    return any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for fn in functions for m in fn.modules())


class _ContextKV:
    """The K/V inputs of the UNet's text context for each group of cross-attention stages (by width), computed
    by a forward pre-hook on the UNet; see the module docstring."""

    def __init__(self, groups: dict[tuple[_Stage, ...], int]) -> None:
        self.groups = groups  # stages -> their K/V input width
        self.context: torch.Tensor | None = None
        self.kv: dict[tuple[_Stage, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def before_forward(self, _unet: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        self.context, self.kv = context, {}
        if isinstance(context, torch.Tensor):
            self.kv = {
                stages: _transform_kv(stages, context)
                for stages, width in self.groups.items()
                if context.shape[-1] == width and not _draws_dropout(stages)
            }

    def lookup(self, stages: tuple[_Stage, ...], context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.kv.get(stages) if context is self.context else None
        return shared if shared is not None else _transform_kv(stages, context)


class KVTransformProcessor(nn.Module):
    """Attention with transformed K/V inputs; everything else as diffusers' AttnProcessor2_0 computes it.
    A cross-attention processor takes its context's K/V inputs from `shared` when they are there."""

    def __init__(self, stages: Sequence[_Stage], shared: _ContextKV | None = None) -> None:
        super().__init__()
        # a plain tuple: the modules stay out of the UNet's parameters and state_dict
        self.stages: tuple[_Stage, ...] = tuple(stages)
        self.shared = shared

    def transform_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared is not None:
            return self.shared.lookup(self.stages, context)
        return _transform_kv(self.stages, context)

    def __call__(  # diffusers calls processors directly, with the Attention module first
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **_unused,
    ) -> torch.Tensor:
        import torch.nn.functional as F

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key_input, value_input = self.transform_kv(encoder_hidden_states)
        key = attn.to_k(key_input)
        value = attn.to_v(value_input)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# diffusers' Attention.forward reads its processor's signature on every call (to filter its kwargs); computed
# once here it answers in a quarter of the time (about 27 -> 7 us a call, 32 calls a tiny-SD1 forward)
KVTransformProcessor.__call__.__signature__ = inspect.signature(KVTransformProcessor.__call__)


def attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The UNet's diffusers Attention modules by module path, with the width of their K/V input."""
    from diffusers.models.attention_processor import Attention

    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and getattr(module, "to_k", None) is not None
    }


def kv_input_width(attn: nn.Module) -> int:
    """Width of the `to_k`/`to_v` input: the context (cross-attention) or hidden states (self-attention)."""
    return int(attn.to_k.in_features)


class KVTransformHandle:
    """Undo for `install_kv_transforms`: puts the original processor objects back."""

    def __init__(
        self,
        unet: nn.Module,
        installed: dict[str, tuple[object, KVTransformProcessor]],
        context_kv: _ContextKV,
    ) -> None:
        self._unet = unet
        self._installed = installed  # module path -> (original processor, ours)
        self._context_kv = context_kv
        self._pre_hook = unet.register_forward_pre_hook(context_kv.before_forward, with_kwargs=True)

    @property
    def layer_paths(self) -> list[str]:
        return list(self._installed)

    def remove(self) -> None:
        """Restore the original processors. Several handles on one UNet must be removed last-first."""
        layers = {name: self._unet.get_submodule(name) for name in self._installed}
        for name, (_original, ours) in self._installed.items():
            if layers[name].processor is not ours:
                raise RuntimeError(
                    f"attention layer {name} has another processor now: remove K/V hooks in reverse order"
                )
        for name, (original, _ours) in self._installed.items():
            layers[name].set_processor(original)
        self._installed = {}
        self._pre_hook.remove()
        self._context_kv.context, self._context_kv.kv = None, {}


def install_kv_transforms(
    unet: UNet2DConditionModel | nn.Module, transforms: Sequence[KVTransform]
) -> KVTransformHandle:
    """Apply `transforms` (in order) to the K/V inputs of every attention layer of a width they cover."""
    for transform in transforms:
        if not isinstance(transform, KVTransform):
            raise TypeError(f"{transform!r} is not a KVTransform (needs `strength` and `kv_modules(width)`)")
    installed: dict[str, tuple[object, KVTransformProcessor]] = {}
    context_kv = _ContextKV({})
    for name, attn in attention_layers(unet).items():
        width = kv_input_width(attn)
        stages = []
        for transform in transforms:
            functions = transform.kv_modules(width)
            if functions is not None:
                stages.append(_Stage.of(transform, *functions))
        if not stages:
            continue  # layers nothing applies to keep their own processor
        cross = bool(getattr(attn, "is_cross_attention", False))
        if cross:
            context_kv.groups[tuple(stages)] = width
        processor = KVTransformProcessor(stages, context_kv if cross else None)
        installed[name] = (attn.processor, processor)
        attn.set_processor(processor)
    return KVTransformHandle(unet, installed, context_kv)
