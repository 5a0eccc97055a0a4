"""Load a ModelBundle from a diffusers folder (model_index.json with unet/, vae/, text_encoder(_2)/, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.errors import CheckpointError
from liandan.models.bundle import Family, ModelBundle
from liandan.models.tokenizer import CLIP_L_PAD, OPEN_CLIP_PAD, clip_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer


def _tokenizer(folder: Path, pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder) if folder.is_dir() else clip_tokenizer(pad_token)


def load_diffusers_folder(
    path: Path, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> ModelBundle:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"{path}: a folder without model_index.json is not a diffusers model")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    missing = [name for name in ("unet", "vae", "text_encoder", "scheduler") if not (path / name).is_dir()]
    if missing:
        raise CheckpointError(f"{path}: diffusers folder without {', '.join(missing)}")
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        text_encoders = [CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype)]
        if "text_encoder_2" in index:
            encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                path / "text_encoder_2", torch_dtype=dtype
            )
            text_encoders.append(encoder_2)
        scheduler_config = DDPMScheduler.load_config(path, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable diffusers folder ({error})") from error
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    # OpenCLIP (SD2) uses gelu where CLIP-L uses quick_gelu
    open_clip = text_encoders[0].config.hidden_act == "gelu"
    family: Family = "sdxl" if len(text_encoders) == 2 else ("sd2" if open_clip else "sd1")
    first_pad = OPEN_CLIP_PAD if family == "sd2" else CLIP_L_PAD
    tokenizers = [_tokenizer(path / "tokenizer", first_pad)]
    if family == "sdxl":
        tokenizers.append(_tokenizer(path / "tokenizer_2", OPEN_CLIP_PAD))
    for module in [*text_encoders, unet, vae]:
        module.to(device).eval().requires_grad_(False)
    return ModelBundle(
        family=family,
        prediction_type=noise_scheduler.config.prediction_type,
        tokenizers=tokenizers,
        text_encoders=text_encoders,
        unet=unet,
        vae=vae,
        noise_scheduler=noise_scheduler,
        name=path.name,
        source=path,
        info={"diffusers_folder": str(path)},
    )
