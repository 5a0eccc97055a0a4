"""What a checkpoint file is, from its keys and shapes alone (no tensor is read): SD1, SD2, SDXL, or a clear
refusal naming the file and what was expected. The probes follow A1111's `guess_model_config_from_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from liandan.errors import CheckpointError
from liandan.models.bundle import Family

EXPECTED = "a Stable Diffusion 1.x, 2.x or SDXL base checkpoint in A1111's single-file (LDM) layout"
_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


@dataclass(frozen=True)
class Detected:
    family: Family
    in_channels: int  # 4; 9 for inpainting and 8 for instruct-pix2pix models (only with allow_inpainting)


def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; expected {EXPECTED}")


def _any(keys: Mapping[str, object], *parts: str) -> bool:
    return any(part in key for key in keys for part in parts)


def detect_family(
    path: Path, shapes: Mapping[str, tuple[int, ...]], *, allow_inpainting: bool = False
) -> Detected:
    """The family of the state dict whose key -> shape map is `shapes`; CheckpointError for anything else."""
    if not shapes:
        raise _refuse(path, "the file holds no tensors")
    if any(key.startswith(("lora_unet_", "lora_te")) for key in shapes):
        raise _refuse(path, "this is a LoRA (lora_unet_*/lora_te* keys): put it in models/Lora")
    if {"string_to_param", "emb_params"} & set(shapes) or {"clip_l", "clip_g"} <= set(shapes):
        raise _refuse(path, "this is a textual-inversion embedding: put it in embeddings/")
    if _any(shapes, "x_embedder", "joint_blocks"):
        raise _refuse(path, "this is a Stable Diffusion 3 checkpoint, which is not supported")
    if _any(shapes, "double_blocks", "single_blocks"):
        raise _refuse(path, "this is a Flux checkpoint, which is not supported")
    if _UNET_IN not in shapes:
        sample = ", ".join(sorted(shapes)[:5])
        raise _refuse(path, f"unknown key layout (no {_UNET_IN}; first keys: {sample})")

    if "conditioner.embedders.1.model.ln_final.weight" in shapes:
        family: Family = "sdxl"
    elif "conditioner.embedders.0.model.ln_final.weight" in shapes:
        raise _refuse(path, "this is an SDXL refiner, which is not supported")
    elif "cond_stage_model.model.ln_final.weight" in shapes:
        family = "sd2"
    elif "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in shapes:
        family = "sd1"
    else:
        raise _refuse(path, "a UNet without a text encoder this loader knows (CLIP-L or OpenCLIP)")

    in_channels = shapes[_UNET_IN][1]
    if in_channels != 4:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(in_channels, f"a {in_channels}-channel")
        if not allow_inpainting:
            raise _refuse(path, f"this is {kind} model ({in_channels} UNet input channels), not allowed here")
    return Detected(family, in_channels)


def attention_widths(shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
    """The K/V input widths of a checkpoint's UNet attention layers (what hypernetwork sizes can name), from
    the LDM keys' shapes: self-attention (attn1) takes the block's channels, cross-attention (attn2) the
    text context."""
    return sorted(
        {
            shape[1]
            for key, shape in shapes.items()
            if key.startswith("model.diffusion_model.")
            and key.endswith((".attn1.to_k.weight", ".attn2.to_k.weight"))
        }
    )
