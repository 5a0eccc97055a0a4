"""CLIP vision towers that match each family's text encoder(s): the image side of aesthetic embeddings.

- SD1: OpenAI CLIP ViT-L/14 (transformers' CLIPVisionModelWithProjection), 768-wide features.
- SD2: OpenCLIP ViT-H/14 laion2b_s32b_b79k (open_clip), 1024 wide.
- SDXL: ViT-L/14 for CLIP-L and OpenCLIP ViT-bigG/14 laion2b_s39b_b160k for OpenCLIP-G, 768 + 1280 wide.
- The tiny models (`models/tiny.py`): a tiny random tower per text encoder, built in code (no download).

A tower is chosen by the family and the text encoders' widths, so a real SD1 never gets a tiny tower.
Weights are looked for in models/aesthetic_clip/<repository name>/, then in the Hugging Face cache, and
downloaded on first use into the first with a progress bar; offline, one message lists every missing file.
Each tower also gives the text projection that maps its text encoder's pooled output into the image
feature space, which the conditioning hook (`aesthetic_conditioning.py`) needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from liandan.errors import FormatError
from liandan.preprocess.weights import WeightFile, ensure_weights, find_weights, hub_file

if TYPE_CHECKING:
    from PIL import Image

    from liandan.models.bundle import Family, ModelBundle

FeatureKey = Literal["clip_l", "clip_h", "clip_g"]
TowerLoader = Literal["hf", "open_clip", "tiny"]
WEIGHTS_FOLDER = "aesthetic_clip"  # below A1111's models/
# the key of each text encoder's feature in an aesthetic embedding, per family
FEATURE_KEYS: dict[str, tuple[FeatureKey, ...]] = {
    "sd1": ("clip_l",),
    "sd2": ("clip_h",),
    "sdxl": ("clip_l", "clip_g"),
}


@dataclass(frozen=True)
class TowerSource:
    """Where one vision tower comes from. `text_width` is the hidden width of the text encoder it pairs
    with; `files` are the weight files (none for tiny towers); `arch` is open_clip's model name."""

    key: FeatureKey
    name: str
    text_width: int
    loader: TowerLoader
    files: tuple[WeightFile, ...] = ()
    arch: str = ""
    tiny: tuple[str, int] = ("", 0)  # (family, encoder index) of a tiny tower


def _hub(repo: str, *filenames: str) -> tuple[WeightFile, ...]:
    return tuple(hub_file(repo, filename, WEIGHTS_FOLDER) for filename in filenames)


_L_REPO = "openai/clip-vit-large-patch14"
_H_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_G_REPO = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
CLIP_L = TowerSource("clip_l", _L_REPO, 768, "hf", _hub(_L_REPO, "config.json", "model.safetensors"))
CLIP_H = TowerSource(
    "clip_h", _H_REPO, 1024, "open_clip", _hub(_H_REPO, "open_clip_pytorch_model.bin"), "ViT-H-14"
)
CLIP_G = TowerSource(
    "clip_g", _G_REPO, 1280, "open_clip", _hub(_G_REPO, "open_clip_pytorch_model.bin"), "ViT-bigG-14"
)
_REAL: dict[str, tuple[TowerSource, ...]] = {"sd1": (CLIP_L,), "sd2": (CLIP_H,), "sdxl": (CLIP_L, CLIP_G)}


def tower_sources(family: Family, text_widths: Sequence[int]) -> tuple[TowerSource, ...]:
    """The vision towers matching a model of `family` whose text encoders have `text_widths`."""
    from liandan.models.tiny import tiny_spec

    real = _REAL[family]
    if list(text_widths) == [source.text_width for source in real]:
        return real
    tiny = [te.config["hidden_size"] for te in tiny_spec(family).text_encoders]
    if list(text_widths) == tiny:
        return tuple(
            TowerSource(key, f"liandan-tiny-{family}", width, "tiny", tiny=(family, index))
            for index, (key, width) in enumerate(zip(FEATURE_KEYS[family], tiny))
        )
    expected = [source.text_width for source in real]
    raise FormatError(
        f"no CLIP vision tower for a {family} model with text encoder widths {list(text_widths)}: "
        f"aesthetic embeddings need the standard widths {expected} (or liandan's tiny model)"
    )


def bundle_tower_sources(bundle: ModelBundle) -> tuple[TowerSource, ...]:
    widths = [te.config.hidden_size for te in bundle.text_encoders]
    return tower_sources(bundle.family, widths)


def _hf_cached(weight: WeightFile, repo: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, weight.name)
    return Path(found) if isinstance(found, str) else None


def _found_together(source: TowerSource, models_dir: Path) -> list[Path] | None:
    """Every file of `source` in one place (a model folder is read as a whole): models/aesthetic_clip/,
    else the Hugging Face cache; None when neither has them all."""
    local = [find_weights(weight, models_dir) for weight in source.files]
    if all(local):
        return local  # type: ignore[return-value]
    cached = [_hf_cached(weight, source.name) for weight in source.files]
    return cached if all(cached) else None  # type: ignore[return-value]


def weight_paths(sources: Sequence[TowerSource], models_dir: Path, allow_download: bool = True) -> list[Path]:
    """Local paths of every weight file of `sources`, in order: models/aesthetic_clip/, the Hugging Face
    cache, or a download into the first. Whatever cannot be had is ONE CheckpointError listing all of it."""
    found = {source: _found_together(source, models_dir) for source in sources}
    missing = [weight for source in sources if found[source] is None for weight in source.files]
    fetched = iter(ensure_weights(missing, models_dir, allow_download))
    return [path for source in sources for path in (found[source] or [next(fetched) for _ in source.files])]


@dataclass
class ClipVisionTower:
    """A loaded tower: `model` maps normalised pixels [N, 3, S, S] to features [N, width]."""

    source: TowerSource
    model: torch.nn.Module
    image_size: int
    width: int

    def to(self, device: str | torch.device) -> ClipVisionTower:
        self.model.to(device)
        return self

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP's preprocessing: shortest side to the tower's size (bicubic), centre crop, CLIP mean/std."""
        from transformers import CLIPImageProcessor

        size = self.image_size
        processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        arrays = processor(images=[image.convert("RGB") for image in images], return_tensors="np")
        return torch.from_numpy(arrays["pixel_values"])

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-length image features [N, width] of `images`."""
        parameter = next(self.model.parameters())
        with torch.no_grad():
            pixels = self.pixels(images).to(device=parameter.device, dtype=parameter.dtype)
            features = self.model(pixels).float()
        return torch.nn.functional.normalize(features, dim=-1).cpu()


class _Projected(torch.nn.Module):
    """The vision half of a transformers CLIPModel or CLIPVisionModelWithProjection: pixels -> features."""

    def __init__(self, tower: torch.nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.tower.vision_model(pixel_values=pixels).pooler_output
        return self.tower.visual_projection(pooled)


def load_tower(source: TowerSource, paths: Sequence[Path]) -> ClipVisionTower:
    """Build the tower of `source` from its weight files (`weight_paths`); tiny towers need none."""
    if source.loader == "tiny":
        from liandan.models.tiny import tiny_clip_vision

        tower, _ = tiny_clip_vision(*source.tiny)
        return ClipVisionTower(
            source, _Projected(tower), tower.config.image_size, tower.config.projection_dim
        )
    if source.loader == "hf":
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(str(paths[0].parent), local_files_only=True)
        del model.text_model  # only the image side is used
        model.eval().requires_grad_(False)
        size = model.config.vision_config.image_size
        return ClipVisionTower(source, _Projected(model), size, model.config.projection_dim)
    import open_clip

    from liandan.formats.a1111_pickle import torch_load_weights_only

    model = open_clip.create_model(source.arch, pretrained=None)
    model.load_state_dict(torch_load_weights_only(paths[0]))
    visual = model.visual.eval().requires_grad_(False)
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    return ClipVisionTower(source, visual, int(size), int(model.text_projection.shape[1]))


def load_towers(bundle: ModelBundle, models_dir: Path, allow_download: bool = True) -> list[ClipVisionTower]:
    """The vision towers of `bundle`'s text encoders, every file found (or its absence reported) at once."""
    sources = bundle_tower_sources(bundle)
    paths = iter(weight_paths(sources, models_dir, allow_download))
    return [load_tower(source, [next(paths) for _ in source.files]) for source in sources]


def text_projection(
    bundle: ModelBundle, encoder_index: int, models_dir: Path, allow_download: bool = True
) -> torch.Tensor:
    """[feature width, text width]: maps text encoder `encoder_index`'s pooled output into its tower's
    feature space. A model that carries the projection (SDXL's OpenCLIP-G, SD2's checkpoint) gives its own;
    CLIP-L's comes from the ViT-L weights (one tensor read), a tiny tower's from its seed."""

    encoder = bundle.text_encoders[encoder_index]
    if hasattr(encoder, "text_projection"):
        return encoder.text_projection.weight.detach().float()
    for key, tensor in bundle.ldm_extras.items():
        if key.endswith("text_projection"):  # SD2: OpenCLIP's [width, features], used as x @ P
            return tensor.detach().float().T.contiguous()
    source = bundle_tower_sources(bundle)[encoder_index]
    if source.loader == "tiny":
        from liandan.models.tiny import tiny_clip_vision

        return tiny_clip_vision(*source.tiny)[1]
    (path,) = [p for p in weight_paths([source], models_dir, allow_download) if p.suffix == ".safetensors"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor("text_projection.weight").to(torch.float32)
