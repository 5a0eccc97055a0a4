"""A ModelBundle from and to a diffusers folder (model_index.json, unet/, vae/, text_encoder(_2)/, ...)."""

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


PIPELINES = {"sdxl": "StableDiffusionXLPipeline"}


def save_diffusers_folder(bundle: ModelBundle, path: Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write `bundle` as a diffusers model folder (model_index.json, unet/, vae/, text_encoder(_2)/,
    tokenizer(_2)/, scheduler/), floating weights in `dtype` if given. Built in a temporary folder beside
    `path` and renamed into place, so no half-written model is ever seen there; an existing `path` is
    refused."""
    import secrets
    import shutil

    import diffusers

    if path.exists():
        raise CheckpointError(f"{path} already exists; a diffusers folder is written to a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    index: dict[str, object] = {
        "_class_name": PIPELINES.get(bundle.family, "StableDiffusionPipeline"),
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(bundle.unet).__name__],
        "vae": ["diffusers", type(bundle.vae).__name__],
        "scheduler": ["diffusers", type(bundle.noise_scheduler).__name__],
    }
    if bundle.family != "sdxl":
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None]}
        index["requires_safety_checker"] = False
    try:
        for name, module in (("unet", bundle.unet), ("vae", bundle.vae)):
            _cast(module, dtype).save_pretrained(tmp / name)
        bundle.noise_scheduler.save_pretrained(tmp / "scheduler")
        for i, (encoder, tokenizer) in enumerate(zip(bundle.text_encoders, bundle.tokenizers)):
            suffix = "" if i == 0 else "_2"
            _cast(encoder, dtype).save_pretrained(tmp / f"text_encoder{suffix}")
            tokenizer.save_pretrained(tmp / f"tokenizer{suffix}")
            index[f"text_encoder{suffix}"] = ["transformers", type(encoder).__name__]
            index[f"tokenizer{suffix}"] = ["transformers", type(tokenizer).__name__]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _cast(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """The module itself, or (another dtype asked for) a CPU copy in that dtype: the bundle is not changed."""
    import copy

    return module if dtype is None else copy.deepcopy(module).to("cpu", dtype)
