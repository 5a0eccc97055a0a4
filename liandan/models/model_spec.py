"""What a model is made of (diffusers/transformers configs per component) and how its modules are built.

The standard SD1 / SD2 / SDXL configs ship as JSON under `configs/`; non-standard shapes come from an
A1111 .yaml (see `ldm_yaml.py`) or from `tiny.py`. Text encoders have a key layout in LDM checkpoints:
"hf_clip" (transformers CLIP-L under `.transformer.`) or "open_clip" (OpenCLIP under `.model.`).
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

from liandan.models.bundle import FAMILIES, Family, ModelBundle, PredictionType
from liandan.models.tokenizer import clip_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

TextLayout = Literal["hf_clip", "open_clip"]


@dataclass
class TextEncoderSpec:
    layout: TextLayout
    with_projection: bool
    pad_token: str
    config: dict


@dataclass
class ModelSpec:
    family: Family
    prediction_type: PredictionType
    unet: dict
    vae: dict
    text_encoders: list[TextEncoderSpec]
    scheduler: dict

    def with_prediction(self, prediction_type: PredictionType) -> ModelSpec:
        spec = copy.deepcopy(self)
        spec.prediction_type = prediction_type
        spec.scheduler["prediction_type"] = prediction_type
        # SD2.1-v overflows fp16 attention without upcasting (diffusers' converter sets the same)
        spec.unet["upcast_attention"] = prediction_type == "v_prediction" and self.family == "sd2"
        return spec


def spec_from_dict(family: Family, data: dict) -> ModelSpec:
    return ModelSpec(
        family=family,
        prediction_type=data["scheduler"]["prediction_type"],
        unet=data["unet"],
        vae=data["vae"],
        text_encoders=[TextEncoderSpec(**te) for te in data["text_encoders"]],
        scheduler=data["scheduler"],
    )


def standard_spec(family: Family, prediction_type: PredictionType = "epsilon") -> ModelSpec:
    """The released architecture of a family (SD1.x, SD2.x 512/768, SDXL base), from the packaged JSON."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    text = (resources.files("liandan.models") / "configs" / f"{family}.json").read_text(encoding="utf-8")
    return spec_from_dict(family, json.loads(text)).with_prediction(prediction_type)


def _text_encoder(te: TextEncoderSpec) -> CLIPTextModel | CLIPTextModelWithProjection:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**te.config)
    return CLIPTextModelWithProjection(config) if te.with_projection else CLIPTextModel(config)


def build_modules(
    spec: ModelSpec, *, empty: bool
) -> tuple[list[CLIPTextModel | CLIPTextModelWithProjection], UNet2DConditionModel, AutoencoderKL]:
    """Text encoders, UNet and VAE of `spec`. With `empty`, parameters live on the meta device (no memory)
    until the loader assigns the checkpoint's tensors; buffers (position ids) stay real."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    context = contextlib.nullcontext()
    if empty:
        from accelerate import init_empty_weights

        context = init_empty_weights(include_buffers=False)
    with context:
        text_encoders = [_text_encoder(te) for te in spec.text_encoders]
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
    for module in [*text_encoders, unet, vae]:
        module.eval()
        module.requires_grad_(False)
    return text_encoders, unet, vae


def assemble_bundle(
    spec: ModelSpec,
    text_encoders: list[CLIPTextModel | CLIPTextModelWithProjection],
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    **fields: object,
) -> ModelBundle:
    """A ModelBundle of built modules plus the spec's tokenizers and noise scheduler."""
    from diffusers import DDPMScheduler

    return ModelBundle(
        family=spec.family,
        prediction_type=spec.prediction_type,
        tokenizers=[clip_tokenizer(te.pad_token) for te in spec.text_encoders],
        text_encoders=text_encoders,
        unet=unet,
        vae=vae,
        noise_scheduler=DDPMScheduler(**spec.scheduler),
        **fields,  # type: ignore[arg-type]
    )


def spec_of_bundle(bundle: ModelBundle) -> ModelSpec:
    """The spec a bundle's modules were built from (what the saver needs to name keys and write a .yaml)."""
    layouts: dict[Family, list[TextLayout]] = {
        "sd1": ["hf_clip"],
        "sd2": ["open_clip"],
        "sdxl": ["hf_clip", "open_clip"],
    }
    return ModelSpec(
        family=bundle.family,
        prediction_type=bundle.prediction_type,
        unet=dict(bundle.unet.config),
        vae=dict(bundle.vae.config),
        text_encoders=[
            TextEncoderSpec(
                layout=layout,
                with_projection=hasattr(te, "text_projection"),
                pad_token=tok.pad_token,
                config=te.config.to_dict(),
            )
            for layout, te, tok in zip(layouts[bundle.family], bundle.text_encoders, bundle.tokenizers)
        ],
        scheduler=dict(bundle.noise_scheduler.config),
    )


def assign_tensor(module: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of parameter or buffer `name` (e.g. one on the meta device), without a copy."""
    import torch

    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if leaf in owner._parameters:
        owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        raise KeyError(f"{type(module).__name__} has no parameter or buffer {name!r}")
