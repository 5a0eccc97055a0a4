"""The ModelBundle: every diffusers/transformers component of one Stable Diffusion model, plus what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

Family = Literal["sd1", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]
FAMILIES: tuple[Family, ...] = ("sd1", "sd2", "sdxl")


@dataclass
class ModelBundle:
    """One loaded model. SD1/SD2 have one tokenizer and text encoder; SDXL has two (CLIP-L, then OpenCLIP-G).

    `short_hash` is A1111's 10-hex sha256 prefix of the checkpoint file (what embeddings record as
    `sd_checkpoint`), `name` its `model_name` (the file stem).
    """

    family: Family
    prediction_type: PredictionType
    tokenizers: list[CLIPTokenizer]
    text_encoders: list[CLIPTextModel | CLIPTextModelWithProjection]
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler
    name: str = "model"
    source: Path | None = None
    short_hash: str | None = None
    # free-form facts the loader found (e.g. "yaml": path of a same-named .yaml that was honoured)
    info: dict[str, str] = field(default_factory=dict)
    # checkpoint tensors that are no module's weights (alphas_cumprod, position_ids, SD2's text_projection),
    # kept by the loader so saving writes the same key set back
    ldm_extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def embedding_widths(self) -> list[int]:
        """Token-embedding width of each text encoder: [768] SD1, [1024] SD2, [768, 1280] SDXL."""
        return [te.get_input_embeddings().weight.shape[1] for te in self.text_encoders]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ModelBundle:
        for module in [*self.text_encoders, self.unet, self.vae]:
            module.to(device=device, dtype=dtype)
        return self


def text_transformer(encoder: torch.nn.Module) -> torch.nn.Module:
    """The CLIP text transformer (embeddings, encoder, final_layer_norm) inside a text encoder: transformers 5
    dropped the `text_model` level from CLIPTextModel, CLIPTextModelWithProjection keeps it."""
    return getattr(encoder, "text_model", encoder)
