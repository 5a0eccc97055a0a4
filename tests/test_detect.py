from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from liandan.errors import CheckpointError
from liandan.models.detect import detect_family
from liandan.models.loading import load_bundle

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


def _shapes(*keys, in_channels=4):
    shapes = dict.fromkeys(keys, (1,))
    shapes[UNET_IN] = (320, in_channels, 3, 3)
    return shapes


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
        ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": ()}, "LoRA"),
        ({"string_to_param": (3, 768)}, "embedding"),
        ({"emb_params": (3, 768)}, "embedding"),
        ({"clip_l": (3, 768), "clip_g": (3, 1280)}, "embedding"),
        ({"model.diffusion_model.x_embedder.proj.weight": (1,)}, "Stable Diffusion 3"),
        ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (1,)}, "Stable Diffusion 3"),
        ({"double_blocks.0.img_attn.qkv.weight": (1,)}, "Flux"),
        ({"some.other.model.weight": (1,)}, "unknown key layout"),
        ({}, "no tensors"),
    ],
)
def test_non_checkpoints_are_refused_with_what_they_are(keys, message):
    with pytest.raises(CheckpointError, match=message) as error:
        detect_family(Path("/models/x.safetensors"), keys)
    assert "/models/x.safetensors" in str(error.value)
    assert "SDXL" in str(error.value)  # says what was expected


def test_families_are_told_apart():
    assert detect_family(Path("a"), _shapes(SD1_TEXT)).family == "sd1"
    assert detect_family(Path("a"), _shapes("cond_stage_model.model.ln_final.weight")).family == "sd2"
    sdxl = _shapes("conditioner.embedders.1.model.ln_final.weight", "conditioner.embedders.0.transformer.x")
    assert detect_family(Path("a"), sdxl).family == "sdxl"
    with pytest.raises(CheckpointError, match="refiner"):
        detect_family(Path("a"), _shapes("conditioner.embedders.0.model.ln_final.weight"))
    with pytest.raises(CheckpointError, match="text encoder"):
        detect_family(Path("a"), _shapes())


@pytest.mark.parametrize(("channels", "kind"), [(9, "inpainting"), (8, "instruct-pix2pix")])
def test_inpainting_models_only_when_allowed(channels, kind):
    shapes = _shapes(SD1_TEXT, in_channels=channels)
    with pytest.raises(CheckpointError, match=kind):
        detect_family(Path("a"), shapes)
    assert detect_family(Path("a"), shapes, allow_inpainting=True).in_channels == channels


def test_truncated_and_unreadable_files_raise_checkpoint_error(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({UNET_IN: torch.zeros(8, 4, 3, 3), SD1_TEXT: torch.zeros(10, 4)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a pickle at all")
    for path in (truncated, garbage, tmp_path / "missing.safetensors"):
        before = sorted(tmp_path.iterdir())
        with pytest.raises(CheckpointError, match=path.name):
            load_bundle(path)
        assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_lora_file_on_disk_is_refused_by_load_bundle(tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    with pytest.raises(CheckpointError, match="models/Lora"):
        load_bundle(lora)
