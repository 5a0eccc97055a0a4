"""The bijection between diffusers/transformers parameter names and A1111's LDM single-file key layout.

`key_plan(spec, modules)` lists, for every parameter of the bundle's modules, the LDM key it lives under and
how the tensor changes on the way: "copy"; "conv1x1" (LDM's VAE attention is 1x1 convolutions, diffusers'
linears); "qkv" (OpenCLIP packs q/k/v in one `in_proj`); "transpose" (OpenCLIP's `text_projection` is
used as x @ P, transformers' as a Linear). Loading and saving both walk the same plan, so a round trip is
exact by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from liandan.models.model_spec import ModelSpec

if TYPE_CHECKING:
    import torch

Transform = Literal["copy", "conv1x1", "qkv", "transpose"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    ("sd1", 0): "cond_stage_model.transformer.",
    ("sd2", 0): "cond_stage_model.model.",
    ("sdxl", 0): "conditioner.embedders.0.transformer.",
    ("sdxl", 1): "conditioner.embedders.1.model.",
}


@dataclass(frozen=True)
class KeyMap:
    ldm_key: str
    component: str  # "unet", "vae", "text_encoder_0", "text_encoder_1"
    names: tuple[str, ...]  # parameter names in that module (three for "qkv")
    transform: Transform


_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_key(name: str, layers_per_block: int, up_attention: set[int]) -> str:
    fixed = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    module, _, leaf = name.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{leaf}"
    n = layers_per_block
    patterns: list[tuple[str, object]] = [
        (
            r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
            lambda lv, j, r: f"input_blocks.{1 + lv * (n + 1) + j}.0.{r}",
        ),
        (
            r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)",
            lambda lv, j, r: f"input_blocks.{1 + lv * (n + 1) + j}.1.{r}",
        ),
        (
            r"down_blocks\.(\d+)\.downsamplers\.(0)\.conv\.(.*)",
            lambda lv, _, r: f"input_blocks.{(lv + 1) * (n + 1)}.0.op.{r}",
        ),
        (r"mid_block\.resnets\.(\d+)()\.(.*)", lambda i, _, r: f"middle_block.{2 * i}.{r}"),
        (r"mid_block\.attentions\.(0)()\.(.*)", lambda _i, _j, r: f"middle_block.1.{r}"),
        (
            r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
            lambda lv, j, r: f"output_blocks.{lv * (n + 1) + j}.0.{r}",
        ),
        (
            r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)",
            lambda lv, j, r: f"output_blocks.{lv * (n + 1) + j}.1.{r}",
        ),
        (
            r"up_blocks\.(\d+)\.upsamplers\.(0)\.conv\.(.*)",
            lambda lv, _, r: f"output_blocks.{lv * (n + 1) + n}.{2 if lv in up_attention else 1}.conv.{r}",
        ),
    ]
    for pattern, build in patterns:
        match = re.fullmatch(pattern, name)
        if match:
            first, second, rest = match.groups()
            if ".resnets." in name:
                sub, _, leaf = rest.rpartition(".")
                rest = f"{_UNET_RESNET.get(sub, sub)}.{leaf}"
            return build(int(first), int(second or 0), rest)  # type: ignore[operator]
    raise KeyError(f"no LDM name for UNet parameter {name!r}")


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key(name: str, levels: int) -> tuple[str, Transform]:
    side, _, rest = name.partition(".")
    if side not in ("encoder", "decoder"):
        return name, "copy"  # quant_conv, post_quant_conv
    rest = rest.replace("conv_norm_out.", "norm_out.")
    mid = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", rest)
    block = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", rest)
    transform: Transform = "copy"
    if mid:
        kind, index, inner = mid.groups()
        if kind == "attentions":
            module, _, leaf = inner.rpartition(".")
            inner = f"{_VAE_ATTENTION[module]}.{leaf}"
            transform = "conv1x1" if leaf == "weight" and module != "group_norm" else "copy"
            rest = f"mid.attn_1.{inner}"
        else:
            rest = f"mid.block_{int(index) + 1}.{_vae_resnet_inner(inner)}"
    elif block:
        direction, level, kind, index, inner = block.groups()
        ldm_level = int(level) if direction == "down" else levels - 1 - int(level)
        if kind == "resnets":
            rest = f"{direction}.{ldm_level}.block.{index}.{_vae_resnet_inner(inner)}"
        else:
            rest = f"{direction}.{ldm_level}.{kind[:-2]}.{inner.removeprefix('conv.')}"
            rest = rest.replace(f".{kind[:-2]}.", f".{kind[:-2]}.conv.")
    return f"{side}.{rest}", transform


def _vae_resnet_inner(inner: str) -> str:
    module, _, leaf = inner.rpartition(".")
    return f"{_VAE_RESNET.get(module, module)}.{leaf}"


_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _open_clip_key(name: str) -> tuple[str, Transform]:
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    if name in fixed:
        return fixed[name], "copy"
    if name == "text_projection.weight":
        return "text_projection", "transpose"
    match = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", name)
    if not match:
        raise KeyError(f"no OpenCLIP name for text-encoder parameter {name!r}")
    layer, module, leaf = match.groups()
    prefix = f"transformer.resblocks.{layer}"
    if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        return f"{prefix}.attn.in_proj_{leaf}", "qkv"
    return f"{prefix}.{_OPEN_CLIP_LAYER[module]}.{leaf}", "copy"


def hf_text_model_prefix(encoder: torch.nn.Module) -> str:
    """What to put before an encoder's parameter names to get transformers 4's names: transformers 5 dropped
    the `text_model.` level from CLIPTextModel (not from CLIPTextModelWithProjection)."""
    return "" if hasattr(encoder, "text_model") else "text_model."


def key_plan(spec: ModelSpec, modules: dict[str, torch.nn.Module]) -> list[KeyMap]:
    """Every parameter of `modules` ("unet", "vae", "text_encoder_<i>") with its LDM key, in module order."""
    plan: list[KeyMap] = []
    unet_config = spec.unet
    up_attention = {i for i, kind in enumerate(unet_config["up_block_types"]) if "CrossAttn" in kind}
    for name, _ in modules["unet"].named_parameters():
        ldm = _unet_key(name, unet_config["layers_per_block"], up_attention)
        plan.append(KeyMap(UNET_PREFIX + ldm, "unet", (name,), "copy"))
    levels = len(spec.vae["block_out_channels"])
    for name, _ in modules["vae"].named_parameters():
        ldm, transform = _vae_key(name, levels)
        plan.append(KeyMap(VAE_PREFIX + ldm, "vae", (name,), transform))
    for index, te_spec in enumerate(spec.text_encoders):
        component = f"text_encoder_{index}"
        prefix = TEXT_PREFIXES[(spec.family, index)]
        packed: dict[str, list[str]] = {}
        text_model_prefix = hf_text_model_prefix(modules[component])
        for name, _ in modules[component].named_parameters():
            if te_spec.layout == "hf_clip":
                plan.append(KeyMap(prefix + text_model_prefix + name, component, (name,), "copy"))
                continue
            ldm, transform = _open_clip_key(text_model_prefix + name)
            if transform == "qkv":
                packed.setdefault(ldm, []).append(name)
                if len(packed[ldm]) == 3:
                    plan.append(
                        KeyMap(prefix + ldm, component, tuple(sorted(packed[ldm], key=_qkv_order)), "qkv")
                    )
            else:
                plan.append(KeyMap(prefix + ldm, component, (name,), transform))
    return plan


def _qkv_order(name: str) -> int:
    return ["q_proj", "k_proj", "v_proj"].index(name.split(".")[-2])


def to_module_tensors(key_map: KeyMap, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The LDM tensor as the module's parameter(s)."""
    if key_map.transform == "conv1x1":
        return [tensor.reshape(tensor.shape[0], tensor.shape[1])]
    if key_map.transform == "qkv":
        return list(tensor.chunk(3, dim=0))
    if key_map.transform == "transpose":
        return [tensor.t().contiguous()]
    return [tensor]


def to_ldm_tensor(key_map: KeyMap, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The module's parameter(s) as the LDM tensor (the inverse of `to_module_tensors`)."""
    import torch

    if key_map.transform == "conv1x1":
        return tensors[0].reshape(*tensors[0].shape, 1, 1)
    if key_map.transform == "qkv":
        return torch.cat(tensors, dim=0)
    if key_map.transform == "transpose":
        return tensors[0].t().contiguous()
    return tensors[0]
