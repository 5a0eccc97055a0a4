"""BLIP captions through transformers' `BlipForConditionalGeneration`.

Weights are a transformers folder (config, weights, processor and tokenizer files): a path, or a Hugging
Face repository name looked up in models/BLIP/<repo name>/ and downloaded there on first use.
A1111's own `model_base_caption_capfilt_large.pth` is in the original BLIP layout and is not read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from liandan.errors import CheckpointError
from liandan.preprocess.image_ops import on_white
from liandan.preprocess.weights import WeightFile, ensure_weights, hub_file

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
BLIP_FOLDER = "BLIP"
HUB_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "vocab.txt",
)


@dataclass(frozen=True)
class BlipOptions:
    model: str = DEFAULT_BLIP
    num_beams: int = 1  # A1111 defaults: 1 beam, 24 to 48 tokens
    min_length: int = 24
    max_length: int = 48


def weight_files(model: str) -> list[WeightFile]:
    """The files to fetch for `model`: none when it is a local folder."""
    return [] if Path(model).is_dir() else [hub_file(model, name, BLIP_FOLDER) for name in HUB_FILES]


def model_folder(model: str, models_dir: Path, allow_download: bool) -> Path:
    folder = Path(model)
    if folder.is_dir():
        return folder
    return ensure_weights(weight_files(model), models_dir, allow_download)[0].parent


class BlipCaptioner:
    name = "blip"

    def __init__(self, folder: Path, options: BlipOptions, device: str = "cpu") -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        if options.min_length > options.max_length:
            raise CheckpointError(f"BLIP min_length {options.min_length} > max_length {options.max_length}")
        try:
            self.processor = BlipProcessor.from_pretrained(folder)
            self.model = BlipForConditionalGeneration.from_pretrained(folder).eval().to(device)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: not a transformers BLIP captioning folder ({e})") from e
        self.options = options
        self.device = device

    @classmethod
    def load(cls, options: BlipOptions, models_dir: Path, device: str = "cpu", allow_download: bool = True):
        return cls(model_folder(options.model, models_dir, allow_download), options, device)

    @torch.inference_mode()
    def caption(self, images: list[Image.Image]) -> list[str]:
        inputs = self.processor(images=[on_white(im) for im in images], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        tokens = self.model.generate(
            pixel_values=pixel_values,
            num_beams=self.options.num_beams,
            min_length=self.options.min_length,
            max_length=self.options.max_length,
        )
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]
