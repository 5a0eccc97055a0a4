"""What an artifact file is, for `python -m liandan info FILE`: its kind, the model family it was made for,
and where it fits. One place that knows every layout we meet: A1111 embeddings (`string_to_param` .pt/.bin),
`emb_params` and SDXL `clip_l`/`clip_g` safetensors, diffusers `learned_embeds`, PNG/WebP cards,
hypernetworks, A1111 `.optim` sidecars, kohya and diffusers/peft LoRAs, single-file checkpoints and diffusers
model folders.

Only keys and shapes decide; a `.pt` is read with the same restricted unpickler as everywhere else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liandan.errors import FormatError
from liandan.formats import embedding_card
from liandan.formats.a1111_pickle import load_pt
from liandan.formats.embedding import SDXL_KEYS, Embedding, embedding_from_data, load_embedding
from liandan.models.bundle import Family

FAMILY_NAMES: dict[Family, str] = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
# Text-encoder token widths of an embedding, and the UNet's cross-attention (context) width, per family.
_EMBEDDING_FAMILY: dict[tuple[int, ...], Family] = {(768,): "sd1", (1024,): "sd2", (768, 1280): "sdxl"}
_CONTEXT_FAMILY: dict[int, Family] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_KOHYA_BASES: tuple[tuple[str, Family], ...] = (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd1"))
_PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth", ".optim")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_PEFT_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")


@dataclass(frozen=True)
class ArtifactInfo:
    kind: str
    family: Family | None  # None when no released family has these widths (a test model)
    width: str | None  # what decided the family ("text encoder 768 + 1280", "context 2048"); None: no family
    details: tuple[str, ...]
    fits: str

    def lines(self) -> list[str]:
        family = FAMILY_NAMES[self.family] if self.family else "no released model family"
        rows = [("kind", self.kind)]
        rows += [("family", f"{family} ({self.width})")] if self.width else []
        rows += [("details", "; ".join(self.details))] if self.details else []
        rows.append(("fits", self.fits))
        return [f"  {label:<8}{value}" for label, value in rows]


def identify(path: str | os.PathLike[str]) -> ArtifactInfo:
    """What `path` is; FormatError (CheckpointError for a model file) naming the file when it is none of
    the known kinds."""
    path = Path(path)
    if path.is_dir():
        return _diffusers_folder_info(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in embedding_card.CARD_SUFFIXES:
        data = embedding_card.read_card(path)
        card = embedding_from_data(data, str(data.get("name", path.stem)), path)
        return _embedding_info(card, f"embedding card ({suffix[1:].upper()} image carrying an embedding)")
    if suffix == ".safetensors":
        return _from_tensors(path, *_safetensors_header(path))
    if suffix in _PICKLE_SUFFIXES:
        return _from_pickle(path, load_pt(path))
    raise FormatError(
        f"{path}: unknown file type {suffix!r}; expected .safetensors, {', '.join(_PICKLE_SUFFIXES)}, "
        f"{' or '.join(embedding_card.CARD_SUFFIXES)}"
    )


def _safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
            return shapes, f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise FormatError(f"{path}: not a readable safetensors file ({error})") from error


def _from_pickle(path: Path, data: Any) -> ArtifactInfo:
    import torch

    if isinstance(data, torch.Tensor):  # no A1111 embedding is a bare tensor: the aesthetic layout
        return _aesthetic_info(path)
    if not isinstance(data, Mapping):
        raise FormatError(f"{path}: holds a {type(data).__name__}, not a dict of tensors or settings")
    if "string_to_param" in data:
        return _embedding_info(
            embedding_from_data(data, path.stem, path), "A1111 textual-inversion embedding (string_to_param)"
        )
    if any(isinstance(key, int) for key in data):
        return _hypernetwork_info(path, data)
    if "optimizer_state_dict" in data:
        return ArtifactInfo(
            "A1111 optimizer state (.optim sidecar)",
            None,
            None,
            (f"guards vectors with checksum {data.get('hash')}",),
            f"resuming {path.name.removesuffix('.optim')} with the same optimizer",
        )
    if isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    shapes = {str(k): tuple(v.shape) for k, v in data.items() if isinstance(v, torch.Tensor)}
    return _from_tensors(path, shapes, {})


def _from_tensors(
    path: Path, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]
) -> ArtifactInfo:
    keys = set(shapes)
    if not keys:
        raise FormatError(f"{path}: holds no tensors, so it is no embedding, LoRA or checkpoint")
    if "liandan_aesthetic" in metadata:
        return _aesthetic_info(path)
    if set(SDXL_KEYS) <= keys:
        return _embedding_info(load_embedding(path), "SDXL textual-inversion embedding (clip_l + clip_g)")
    if keys == {"emb_params"} or (len(keys) == 1 and next(iter(keys)).startswith("string_to_param")):
        return _embedding_info(load_embedding(path), f"textual-inversion embedding ({next(iter(keys))})")
    if len(keys) == 1 and len(next(iter(shapes.values()))) in (1, 2):
        token = next(iter(keys))
        return _embedding_info(load_embedding(path), f"diffusers learned_embeds (token {token!r})")
    if any(key.startswith(_KOHYA_PREFIXES) for key in keys):
        return _lora_info(shapes, metadata, "kohya LoRA (lora_unet_/lora_te keys)", ".lora_down.weight")
    if any(key.endswith(_PEFT_DOWN) for key in keys):
        return _lora_info(
            shapes, metadata, "diffusers/peft LoRA (lora_A/lora_B or lora.down keys)", *_PEFT_DOWN
        )
    if any(key.startswith("model.diffusion_model.") for key in keys):
        return _checkpoint_info(path, shapes)
    sample = ", ".join(sorted(keys)[:5])
    raise FormatError(
        f"{path}: {len(keys)} tensors in a key layout that is no embedding, LoRA or checkpoint (first keys: "
        f"{sample})"
    )


def _target(family: Family | None, otherwise: str) -> str:
    return f"{FAMILY_NAMES[family]} checkpoints" if family else otherwise


def _aesthetic_info(path: Path) -> ArtifactInfo:
    from liandan.formats.aesthetic import load_aesthetic

    embedding = load_aesthetic(path)
    widths = tuple(int(feature.shape[-1]) for feature in embedding.features.values())
    family = _EMBEDDING_FAMILY.get(widths)  # CLIP feature widths happen to equal the token widths
    width = " + ".join(map(str, widths))
    details = [f"name {embedding.name!r}"]
    if embedding.clip_model:
        details.append(f"from {embedding.image_count} images through {embedding.clip_model}")
    target = _target(family, f"models whose CLIP is {width} wide")
    return ArtifactInfo(
        "aesthetic embedding (mean CLIP image feature)",
        family,
        f"CLIP {width}",
        tuple(details),
        f"{target}: put it in models/aesthetic_embeddings/ and choose it under Aesthetic gradients",
    )


def _embedding_info(embedding: Embedding, kind: str) -> ArtifactInfo:
    widths = tuple(embedding.widths)
    family = _EMBEDDING_FAMILY.get(widths)
    width = " + ".join(map(str, widths))
    count = embedding.num_vectors
    details = [f"name {embedding.name!r}", f"{count} vector{'s' if count > 1 else ''}"]
    if embedding.step is not None:
        details.append(f"step {embedding.step}")
    if embedding.sd_checkpoint_name or embedding.sd_checkpoint:
        details.append(f"trained on {embedding.sd_checkpoint_name or '?'} [{embedding.sd_checkpoint or '?'}]")
    target = _target(family, f"models whose text encoders are {width} wide")
    return ArtifactInfo(
        kind,
        family,
        f"text encoder {width}",
        tuple(details),
        f"{target}: put it in embeddings/ and write {embedding.name} in a prompt",
    )


def _hypernetwork_info(path: Path, data: Mapping[Any, Any]) -> ArtifactInfo:
    widths = sorted(key for key in data if isinstance(key, int))
    families = [_CONTEXT_FAMILY[w] for w in widths if w in _CONTEXT_FAMILY]
    family = families[0] if len(families) == 1 else None
    width = ", ".join(map(str, widths))
    details = (
        f"layer structure {data.get('layer_structure')}",
        f"activation {data.get('activation_func')}",
        f"step {data.get('step')}",
    )
    return ArtifactInfo(
        "A1111 hypernetwork",
        family,
        f"attention {width}",
        details,
        f"{_target(family, f'models with attention widths {width}')}: put it in models/hypernetworks/ "
        f"and write <hypernet:{path.stem}:1> in a prompt",
    )


def _kohya_family(metadata: Mapping[str, str]) -> Family | None:
    """kohya's `ss_base_model_version` (sd_v1, sd_v2, sdxl_base_v1-0), for LoRAs without attn2 modules."""
    version = metadata.get("ss_base_model_version", "")
    return next((family for prefix, family in _KOHYA_BASES if version.startswith(prefix)), None)


def _lora_info(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str], kind: str, *down_suffixes: str
) -> ArtifactInfo:
    downs = {key: shape for key, shape in shapes.items() if key.endswith(down_suffixes)}
    context = sorted({shape[1] for key, shape in downs.items() if "attn2" in key and "to_k" in key})
    width = ", ".join(map(str, context))
    family = _CONTEXT_FAMILY.get(context[0]) if len(context) == 1 else None
    if not context:
        family = _kohya_family(metadata)
    text_encoder = any("lora_te" in key or "text_encoder" in key for key in downs)
    details = [
        f"{len(downs)} modules",
        f"rank {', '.join(map(str, sorted({shape[0] for shape in downs.values()})))}",
        "UNet and text encoder" if text_encoder else "UNet only",
    ]
    details += [
        f"{key} {metadata[key]}" for key in ("ss_base_model_version", "ss_network_alpha") if key in metadata
    ]
    where = (
        "A1111's Lora extension: put it in models/Lora/"
        if kind.startswith("kohya")
        else "diffusers' load_lora_weights (A1111 reads kohya's lora_unet_ keys)"
    )
    target = _target(family, f"models with a {width}-wide context" if context else "a model no key names")
    return ArtifactInfo(
        kind,
        family,
        f"context {width}" if context else "no cross-attention module",
        tuple(details),
        f"{target}, through {where}",
    )


def _checkpoint_info(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> ArtifactInfo:
    from liandan.models.detect import detect_family

    detected = detect_family(path, shapes, allow_inpainting=True)  # CheckpointError says what it is not
    context = next((shape[-1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")), None)
    details = [f"UNet input channels {detected.in_channels}"]
    if detected.family == "sd2":
        details.append("v-prediction or epsilon: the weights tell, not the keys")
    use = (
        "a base to train on"
        if detected.in_channels == 4
        else "generating only (liandan trains 4-channel bases)"
    )
    return ArtifactInfo(
        "Stable Diffusion checkpoint (single file, LDM layout)",
        detected.family,
        f"context {context}",
        tuple(details),
        f"{use}: put it in models/Stable-diffusion/",
    )


def _diffusers_folder_info(path: Path) -> ArtifactInfo:
    config_file = path / "unet" / "config.json"
    if not (path / "model_index.json").is_file() or not config_file.is_file():
        raise FormatError(f"{path}: a folder, but no diffusers model (model_index.json, unet/config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FormatError(f"{config_file}: unreadable ({error})") from error
    context = config.get("cross_attention_dim")
    return ArtifactInfo(
        "diffusers model folder",
        _CONTEXT_FAMILY.get(context) if isinstance(context, int) else None,
        f"context {context}",
        (f"UNet input channels {config.get('in_channels')}",),
        "a base to train on with liandan (in models/Stable-diffusion/ or by path); A1111 reads single files",
    )
