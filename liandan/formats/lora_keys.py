"""LoRA key names: what we call each module of a model in a LoRA file, and how the WebUI's built-in Lora
extension (1.10.1, `extensions-builtin/Lora/networks.py`) finds the module a saved key belongs to.

Our names are kohya's: `lora_unet_<module path>` and `lora_te_` (SD1/SD2) or `lora_te1_`/`lora_te2_` (SDXL)
`<transformers 4 path>`, dots as underscores. The UNet path is diffusers' for SD1/SD2 UNets of 2 layers per
block (the only ones the WebUI's name conversion counts right: it assumes 3 LDM blocks per level) and the LDM
path otherwise (SDXL, as kohya writes it, and the tiny test models), which the WebUI takes as it is.

`webui_layer(key, layers)` is our own mirror of the WebUI's lookup: the name of its LDM layer that a key
prefix lands on, or None when the WebUI would silently skip the key (the classic "my LoRA does nothing").
`webui_layers(bundle)` lists the WebUI's layer names of a model (its `network_layer_mapping`), computed
from our LDM key plan, so it needs no WebUI and, from a ModelSpec on the meta device, no weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from liandan.models.ldm_layout import UNET_PREFIX, hf_text_model_prefix, key_plan

if TYPE_CHECKING:
    import torch

    from liandan.models.bundle import ModelBundle
    from liandan.models.model_spec import ModelSpec

TEXT_KEY_PREFIXES = {"sd1": ("lora_te",), "sd2": ("lora_te",), "sdxl": ("lora_te1", "lora_te2")}
# the part of an LDM key the WebUI's layer names start after, per component (SDXL's embedders keep "0."/"1.")
_LAYER_ROOTS = {
    "unet": "model.",
    "text_encoder_0": "cond_stage_model.",
    "sdxl_text": "conditioner.embedders.",
}
_RESNET_SUFFIX = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}
_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def _ldm_module(ldm_key: str) -> str:
    return ldm_key.rpartition(".")[0]


def uses_diffusers_unet_names(spec: ModelSpec) -> bool:
    return spec.family != "sdxl" and spec.unet["layers_per_block"] == 2


def module_names(spec: ModelSpec, modules: dict[str, torch.nn.Module]) -> dict[tuple[str, str], str]:
    """(component, module path) -> key prefix, for every UNet and text-encoder module with a weight."""
    names: dict[tuple[str, str], str] = {}
    diffusers_unet = uses_diffusers_unet_names(spec)
    for key_map in key_plan(spec, modules):
        if key_map.component == "vae":
            continue
        for name in key_map.names:
            path = name.rpartition(".")[0]
            if key_map.component == "unet":
                tail = path if diffusers_unet else _ldm_module(key_map.ldm_key).removeprefix(UNET_PREFIX)
                names[("unet", path)] = "lora_unet_" + tail.replace(".", "_")
            else:
                index = int(key_map.component.rpartition("_")[2])
                prefix = TEXT_KEY_PREFIXES[spec.family][index]
                hf_path = hf_text_model_prefix(modules[key_map.component]) + path
                names[(key_map.component, path)] = f"{prefix}_{hf_path.replace('.', '_')}"
    return names


def webui_layers(
    spec: ModelSpec, modules: dict[str, torch.nn.Module]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """The WebUI's layer names (its `network_layer_mapping`) of the modules with weights, each with the
    (component, module path) of our modules it holds: three for an OpenCLIP attention whose q/k/v are packed
    in one `in_proj`, else one."""
    layers: dict[str, tuple[tuple[str, str], ...]] = {}
    for key_map in key_plan(spec, modules):
        if key_map.component == "vae":
            continue
        if key_map.component == "unet":
            root = _LAYER_ROOTS["unet"]
        elif spec.family == "sdxl":
            root = _LAYER_ROOTS["sdxl_text"]
        else:
            root = _LAYER_ROOTS["text_encoder_0"]
        module = _ldm_module(key_map.ldm_key.removeprefix(root)).replace(".", "_")
        layers[module] = tuple((key_map.component, name.rpartition(".")[0]) for name in key_map.names)
    return layers


def bundle_modules(bundle: ModelBundle) -> dict[str, torch.nn.Module]:
    modules: dict[str, torch.nn.Module] = {"unet": bundle.unet, "vae": bundle.vae}
    modules.update({f"text_encoder_{i}": te for i, te in enumerate(bundle.text_encoders)})
    return modules


def _diffusers_to_compvis(key: str, is_sd2: bool) -> str:
    """The WebUI's `convert_diffusers_name_to_compvis`, rewritten: a kohya key prefix -> its layer name."""
    rules: list[tuple[str, object]] = [
        (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
        (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
        (
            r"lora_unet_time_embedding_linear_(\d+)(.*)",
            lambda m: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}",
        ),
        (
            r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
            lambda m: (
                f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_"
                f"{1 if m[2] == 'attentions' else 0}_{_suffix(m[2], m[4])}"
            ),
        ),
        (
            r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
            lambda m: (
                f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_"
                f"{_suffix(m[1], m[3])}"
            ),
        ),
        (
            r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
            lambda m: (
                f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_"
                f"{1 if m[2] == 'attentions' else 0}_{_suffix(m[2], m[4])}"
            ),
        ),
        (
            r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv",
            lambda m: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op",
        ),
        (
            r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
            lambda m: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv",
        ),
        (r"lora_te_text_model_encoder_layers_(\d+)_(.+)", lambda m: _text_layer("", m[1], m[2], is_sd2)),
        (r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", lambda m: _text_layer("1_", m[1], m[2], True)),
    ]
    for pattern, build in rules:
        match = re.match(pattern, key)  # re.match as the WebUI: anchored at the start only
        if match:
            return build(match)  # type: ignore[operator]
    return key


def _suffix(kind: str, rest: str) -> str:
    return _RESNET_SUFFIX.get(rest, rest) if kind == "resnets" else rest


def _text_layer(root: str, layer: str, rest: str, open_clip: bool) -> str:
    if not open_clip:
        return f"transformer_text_model_encoder_layers_{layer}_{rest}"
    if "mlp_fc1" in rest:
        rest = rest.replace("mlp_fc1", "mlp_c_fc")
    elif "mlp_fc2" in rest:
        rest = rest.replace("mlp_fc2", "mlp_c_proj")
    else:
        rest = rest.replace("self_attn", "attn")
    return f"{root}model_transformer_resblocks_{layer}_{rest}"


def webui_layer(key: str, layers: Mapping[str, object]) -> tuple[str, str] | None:
    """(the WebUI's name for the key's weights, the layer they change) for a key prefix (the part before
    the first '.'), or None when the WebUI finds no layer. OpenCLIP's q/k/v land on the attention's packed
    projection (`..._attn`), named `..._attn_q_proj`: the WebUI changes that layer only when q, k, v and
    out_proj are all there (see `unapplied_keys`)."""
    is_sd2 = any("model_transformer_resblocks" in layer for layer in layers)
    sd_key = _diffusers_to_compvis(key, is_sd2)
    if sd_key in layers:
        return sd_key, sd_key
    x_proj = _X_PROJ.match(sd_key)
    if x_proj and x_proj[1] in layers:
        return sd_key, x_proj[1]
    if "lora_unet" in key:
        sd_key = key.replace("lora_unet", "diffusion_model")
    elif "lora_te1_text_model" in key:
        sd_key = key.replace("lora_te1_text_model", "0_transformer_text_model")
        if sd_key not in layers:
            sd_key = key.replace("lora_te1_text_model", "transformer_text_model")
    else:
        return None
    return (sd_key, sd_key) if sd_key in layers else None


def unapplied_keys(prefixes: list[str], layers: Mapping[str, tuple[tuple[str, str], ...]]) -> list[str]:
    """The key prefixes whose weights the WebUI would never apply: no layer found, or a part of an OpenCLIP
    packed attention (q, k, v, out_proj) whose set is incomplete (the WebUI changes it only whole)."""
    found = {prefix: webui_layer(prefix, layers) for prefix in prefixes}
    sd_keys = {match[0] for match in found.values() if match}
    unapplied = []
    for prefix, match in found.items():
        if match is None:
            unapplied.append(prefix)
            continue
        packed = match[1].removesuffix("_out_proj")
        if len(layers.get(packed, ())) == 3 and not all(
            f"{packed}_{p}_proj" in sd_keys for p in ("q", "k", "v", "out")
        ):
            unapplied.append(prefix)
    return sorted(unapplied)
