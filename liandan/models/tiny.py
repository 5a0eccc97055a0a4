"""Tiny random-weight models in SD1, SD2 and SDXL shapes: for tests, smoke runs and the default model.

Weights are drawn from our own seeded generator (not the libraries' initialisers), so they are the same on
every diffusers/transformers version. Nothing is zero: matrices ~ N(0, 0.5/sqrt(fan_in)), norm scales
1 + 0.1 N, biases 0.1 N, as the fixture tiny-sd1 was made (an all-zero CLIP output would make A1111's
emphasis rescale divide 0 by 0).

- "sd1": exactly the architecture of the A1111 fixture `tiny-sd1.safetensors` (+ its .yaml and tiny-clip):
  context width 32, UNet channels 32/64/128/128, 2 heads, VAE 32 channels, factor 8.
- "sd2": v-prediction, one OpenCLIP-layout encoder (width 64, 3 layers; use the penultimate layer as for SD2),
  linear attention projections, pad token "!".
- "sdxl": CLIP-L-layout (width 64) + OpenCLIP-G-layout with projection (width 128), context 192,
  text_time add-embeddings, no attention in the first level.
Text encoders keep 64 channels per head, the rule the loader uses to infer heads from weight shapes, and
(SD2, SDXL) an MLP 4 times their width, as CLIP's: open_clip 2.20, the WebUI's, builds text towers only so.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.models.bundle import FAMILIES, Family, ModelBundle
from liandan.models.model_spec import (
    ModelSpec,
    TextEncoderSpec,
    assemble_bundle,
    assign_tensor,
    build_modules,
)
from liandan.models.tokenizer import CLIP_L_PAD, OPEN_CLIP_PAD

if TYPE_CHECKING:
    import torch
    from transformers import CLIPVisionModelWithProjection


def _text(hidden: int, layers: int, heads: int, act: str, intermediate: int | None = None) -> dict:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": intermediate or 4 * hidden,  # CLIP's ratio; open_clip 2.20 allows no other
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "projection_dim": hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


def _standard(family: Family) -> dict:
    text = (resources.files("liandan.models") / "configs" / f"{family}.json").read_text(encoding="utf-8")
    return json.loads(text)


_TINY_VAE = {
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "sample_size": 64,
}


def tiny_spec(family: Family) -> ModelSpec:
    """The architecture of the tiny model of `family` (standard configs with small widths)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    base = _standard(family)
    unet, vae, scheduler = base["unet"], {**base["vae"], **_TINY_VAE}, base["scheduler"]
    unet["sample_size"] = 8
    if family == "sd1":
        unet.update(block_out_channels=[32, 64, 128, 128], cross_attention_dim=32, attention_head_dim=2)
        # the fixture's tiny-clip: width 32 with 2 heads and an odd MLP width
        texts = [
            TextEncoderSpec("hf_clip", False, CLIP_L_PAD, _text(32, 2, 2, "quick_gelu", intermediate=37))
        ]
    elif family == "sd2":
        unet.update(
            block_out_channels=[32, 64],
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=2,
        )
        texts = [TextEncoderSpec("open_clip", False, OPEN_CLIP_PAD, _text(64, 3, 1, "gelu"))]
        scheduler["prediction_type"] = "v_prediction"
    else:
        unet.update(
            block_out_channels=[32, 64, 128],
            layers_per_block=1,
            transformer_layers_per_block=[1, 1, 2],
            cross_attention_dim=64 + 128,
            attention_head_dim=2,
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=128 + 6 * 8,
        )
        texts = [
            TextEncoderSpec("hf_clip", False, CLIP_L_PAD, _text(64, 2, 1, "quick_gelu")),
            TextEncoderSpec("open_clip", True, OPEN_CLIP_PAD, _text(128, 3, 2, "gelu")),
        ]
    return ModelSpec(family, scheduler["prediction_type"], unet, vae, texts, scheduler)


def _random_like(name: str, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    import torch

    noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
    if param.ndim >= 2:
        fan_in = param[0].numel()
        return noise * (0.5 / fan_in**0.5)
    if name.endswith("weight"):  # every 1-D weight here is a norm scale
        return 1.0 + 0.1 * noise
    return 0.1 * noise


def tiny_bundle(family: str, seed: int = 0) -> ModelBundle:
    """A tiny random-weight ModelBundle of `family` ("sd1", "sd2", "sdxl"), deterministic per seed."""
    import torch

    spec = tiny_spec(family)  # type: ignore[arg-type]
    text_encoders, unet, vae = build_modules(spec, empty=True)
    generator = torch.Generator().manual_seed(seed)
    for module in [*text_encoders, unet, vae]:
        for name, param in list(module.named_parameters()):
            assign_tensor(module, name, _random_like(name, param, generator))
    return assemble_bundle(
        copy.deepcopy(spec),
        text_encoders,
        unet,
        vae,
        name=f"liandan-tiny-{family}",
        info={"tiny_seed": str(seed)},
    )


# the tiny CLIP vision towers draw from their own seeds, so the tiny models' weights stay as they were
_TINY_VISION_SEED = 1000
_TINY_VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}


def tiny_clip_vision(
    family: str, encoder_index: int = 0
) -> tuple[CLIPVisionModelWithProjection, torch.Tensor]:
    """The tiny random CLIP vision tower paired with text encoder `encoder_index` of the tiny `family`
    model (the real architecture, transformers' CLIPVisionModelWithProjection, 32 px), and the text
    projection [projection width, text width] that maps that encoder's pooled output into the same space.
    Its projection width is the text encoder's `projection_dim`. Deterministic, and apart from
    `tiny_bundle`'s generator."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    text = tiny_spec(family).text_encoders[encoder_index].config  # type: ignore[arg-type]
    config = CLIPVisionConfig(
        **_TINY_VISION,
        image_size=32,
        patch_size=8,
        projection_dim=text["projection_dim"],
        hidden_act="quick_gelu",
    )
    tower = CLIPVisionModelWithProjection(config)
    generator = torch.Generator().manual_seed(_TINY_VISION_SEED + 10 * FAMILIES.index(family) + encoder_index)
    for name, param in list(tower.named_parameters()):
        assign_tensor(tower, name, _random_like(name, param, generator))
    projection = torch.empty(text["projection_dim"], text["hidden_size"])
    projection = _random_like("text_projection", projection, generator)
    tower.eval().requires_grad_(False)
    return tower, projection


TINY_CLIP_FOLDER = "liandan-tiny-clip"
# raised whenever a tiny model's architecture, weights or .yaml change, so files of older ones are rewritten
TINY_REVISION = "2"


def _tiny_clip_home(dest_dir: Path) -> Path:
    """`models/` of the WebUI tree that `dest_dir` belongs to (A1111 resolves the yaml's `version` from its
    root); a folder of its own when `dest_dir` is not models/Stable-diffusion."""
    return dest_dir.parent if dest_dir.parent.name == "models" else dest_dir / "models"


def _is_intact(path: Path, family: str) -> bool:
    from safetensors import safe_open

    if not path.with_suffix(".yaml").is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - any unreadable file is rewritten
        return False
    return (metadata.get("liandan_tiny"), metadata.get("liandan_tiny_revision")) == (family, TINY_REVISION)


def write_tiny_models(dest_dir: Path) -> dict[str, Path]:
    """Write `liandan-tiny-sd1.safetensors` and `liandan-tiny-sdxl.safetensors` (seed 0, each with a .yaml)
    into `dest_dir`, and the SD1 text encoder's CLIP folder as `models/liandan-tiny-clip` so a real A1111
    loads the SD1 one too. Deterministic and idempotent (intact files are kept). Returns family -> path."""
    from liandan.atomic_files import write_text_atomic
    from liandan.models.ldm_yaml import yaml_text
    from liandan.models.saving import save_checkpoint
    from liandan.models.tokenizer import write_tokenizer_files

    dest_dir = Path(dest_dir)
    clip_folder = _tiny_clip_home(dest_dir) / TINY_CLIP_FOLDER
    written: dict[str, Path] = {}
    for family in ("sd1", "sdxl"):
        path = dest_dir / f"liandan-tiny-{family}.safetensors"
        written[family] = path
        if _is_intact(path, family):
            continue
        bundle = tiny_bundle(family)
        metadata = {
            "liandan_tiny": family,
            "liandan_tiny_revision": TINY_REVISION,
            "note": f"tiny random {family.upper()}-layout test model, seed 0",
        }
        save_checkpoint(bundle, path, metadata=metadata)
        if family == "sd1":
            spec = tiny_spec("sd1")
            version = f"models/{TINY_CLIP_FOLDER}"
            texts = [spec.text_encoders[0].config]
            text = yaml_text("sd1", spec.unet, spec.vae, spec.scheduler, texts, clip_version=version)
            write_text_atomic(path.with_suffix(".yaml"), text)
    if not (clip_folder / "config.json").is_file():
        config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model"}
        config.update(tiny_spec("sd1").text_encoders[0].config)
        write_tokenizer_files(clip_folder)
        write_text_atomic(clip_folder / "config.json", json.dumps(config, indent=2))
    return written
