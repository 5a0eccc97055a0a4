"""`identify`: every artifact layout we meet is named, with its family and where it fits."""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from liandan.errors import CheckpointError, FormatError
from liandan.formats.a1111_pickle import save_pt_a1111
from liandan.formats.embedding import (
    Embedding,
    save_embedding_card,
    save_embedding_diffusers,
    save_embedding_optimizer,
    save_embedding_pt,
    save_embedding_safetensors,
)
from liandan.formats.identify import identify


def _sd1_embedding(name: str = "cat") -> Embedding:
    return Embedding(name=name, vectors={"*": torch.randn(3, 768)}, step=40, sd_checkpoint="0123456789")


def test_a1111_pt_embedding(tmp_path: Path) -> None:
    info = identify(save_embedding_pt(_sd1_embedding(), tmp_path / "cat.pt"))
    assert info.kind == "A1111 textual-inversion embedding (string_to_param)"
    assert info.family == "sd1" and info.width == "text encoder 768"
    assert "3 vectors" in info.details and "step 40" in info.details
    assert "embeddings/" in info.fits and "SD1" in info.fits


def test_parameter_dict_embedding(tmp_path: Path) -> None:
    """The original textual-inversion code's files: a pickled ParameterDict, SD2-wide here."""
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(2, 1024))})
    buffer = io.BytesIO()
    torch.save({"string_to_param": params, "name": "old"}, buffer)
    path = tmp_path / "old.bin"
    path.write_bytes(buffer.getvalue())
    info = identify(path)
    assert info.kind.startswith("A1111 textual-inversion embedding") and info.family == "sd2"


def test_emb_params_and_sdxl_safetensors(tmp_path: Path) -> None:
    sd2 = Embedding(name="sd2", vectors={"*": torch.randn(1, 1024)})
    info = identify(save_embedding_safetensors(sd2, tmp_path / "sd2.safetensors"))
    assert info.kind == "textual-inversion embedding (emb_params)" and info.family == "sd2"
    assert "1 vector" in info.details

    sdxl = Embedding(name="xl", vectors={"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)})
    info = identify(save_embedding_safetensors(sdxl, tmp_path / "xl.safetensors"))
    assert info.kind == "SDXL textual-inversion embedding (clip_l + clip_g)"
    assert info.family == "sdxl" and info.width == "text encoder 768 + 1280"


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_diffusers_learned_embeds(tmp_path: Path, suffix: str) -> None:
    path = save_embedding_diffusers(_sd1_embedding(), tmp_path / f"learned_embeds{suffix}", "<cat-toy>")
    info = identify(path)
    assert info.kind == "diffusers learned_embeds (token '<cat-toy>')" and info.family == "sd1"


def test_embedding_card_and_plain_image(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 64), "gray")
    card = save_embedding_card(
        _sd1_embedding("carded"), image, tmp_path / "carded.png", "model", "abcdef0123"
    )
    info = identify(card)
    assert info.kind == "embedding card (PNG image carrying an embedding)" and info.family == "sd1"
    assert "name 'carded'" in info.details

    plain = tmp_path / "photo.png"
    image.save(plain)
    with pytest.raises(FormatError, match="carries no embedding"):
        identify(plain)


def test_hypernetwork(tmp_path: Path) -> None:
    def pair(width: int) -> tuple[OrderedDict, OrderedDict]:
        state = OrderedDict({"linear.0.weight": torch.zeros(2 * width, width)})
        return state, state

    data = {width: pair(width) for width in (768, 320, 640, 1280)}
    data |= {"layer_structure": [1, 2, 1], "activation_func": "relu", "step": 7, "name": "hn"}
    info = identify(save_pt_a1111(data, tmp_path / "hn.pt"))
    assert info.kind == "A1111 hypernetwork" and info.family == "sd1"
    assert info.width == "attention 320, 640, 768, 1280"
    assert "<hypernet:hn:1>" in info.fits


def _lora_tensors(prefix: str, context: int, down: str, up: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{down}": torch.zeros(4, context), f"{prefix}{up}": torch.zeros(320, 4)}


def test_kohya_loras(tmp_path: Path) -> None:
    sd1 = _lora_tensors(
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.",
        768,
        "lora_down.weight",
        "lora_up.weight",
    )
    sd1 |= _lora_tensors(
        "lora_te_text_model_encoder_layers_0_mlp_fc1.", 768, "lora_down.weight", "lora_up.weight"
    )
    save_file(sd1, str(tmp_path / "sd1.safetensors"), metadata={"ss_network_alpha": "4.0"})
    info = identify(tmp_path / "sd1.safetensors")
    assert info.kind == "kohya LoRA (lora_unet_/lora_te keys)" and info.family == "sd1"
    assert {"2 modules", "rank 4", "UNet and text encoder", "ss_network_alpha 4.0"} <= set(info.details)
    assert "models/Lora/" in info.fits

    # no cross-attention module: the family comes from kohya's metadata
    xl = _lora_tensors("lora_unet_input_blocks_4_1_proj_in.", 640, "lora_down.weight", "lora_up.weight")
    save_file(xl, str(tmp_path / "xl.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert identify(tmp_path / "xl.safetensors").family == "sdxl"


@pytest.mark.parametrize(
    ("down", "up"), [("lora_A.weight", "lora_B.weight"), ("lora.down.weight", "lora.up.weight")]
)
def test_diffusers_and_peft_loras(tmp_path: Path, down: str, up: str) -> None:
    tensors = _lora_tensors(
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.", 2048, down, up
    )
    save_file(tensors, str(tmp_path / "pytorch_lora_weights.safetensors"))
    info = identify(tmp_path / "pytorch_lora_weights.safetensors")
    assert info.kind.startswith("diffusers/peft LoRA") and info.family == "sdxl"
    assert "UNet only" in info.details and "load_lora_weights" in info.fits


def _checkpoint(path: Path, in_channels: int) -> Path:
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, in_channels, 3, 3),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(
                8, 768
            ),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 768),
        },
        str(path),
    )
    return path


def test_checkpoints(tmp_path: Path) -> None:
    info = identify(_checkpoint(tmp_path / "base.safetensors", 4))
    assert info.kind == "Stable Diffusion checkpoint (single file, LDM layout)"
    assert info.family == "sd1" and info.width == "context 768"
    assert info.fits.startswith("a base to train on")
    assert identify(_checkpoint(tmp_path / "inpaint.safetensors", 9)).fits.startswith("generating only")


def test_ckpt_with_a_state_dict_and_an_optimizer_sidecar(tmp_path: Path) -> None:
    base = _checkpoint(tmp_path / "base.safetensors", 4)
    save_pt_a1111({"state_dict": load_file(base), "global_step": 10}, tmp_path / "base.ckpt")
    assert identify(tmp_path / "base.ckpt").kind == "Stable Diffusion checkpoint (single file, LDM layout)"

    embedding = _sd1_embedding()
    sidecar = save_embedding_optimizer(tmp_path / "cat.pt", embedding, {"state": {}, "param_groups": []})
    info = identify(sidecar)
    assert info.kind == "A1111 optimizer state (.optim sidecar)"
    assert info.details == (f"guards vectors with checksum {embedding.checksum()}",)
    assert [line.split()[0] for line in info.lines()] == ["kind", "details", "fits"]  # no family to tell


def test_diffusers_model_folder(tmp_path: Path) -> None:
    (tmp_path / "xl" / "unet").mkdir(parents=True)
    (tmp_path / "xl" / "model_index.json").write_text("{}")
    (tmp_path / "xl" / "unet" / "config.json").write_text('{"cross_attention_dim": 2048, "in_channels": 4}')
    info = identify(tmp_path / "xl")
    assert info.kind == "diffusers model folder" and info.family == "sdxl"
    with pytest.raises(FormatError, match="a folder, but no diffusers model"):
        identify(tmp_path / "xl" / "unet")


def test_what_is_none_of_them_says_so(tmp_path: Path) -> None:
    save_file(
        {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors")
    )
    with pytest.raises(FormatError, match=r"other\.safetensors: 2 tensors in a key layout.*a\.weight"):
        identify(tmp_path / "other.safetensors")
    sd3 = {f"model.diffusion_model.joint_blocks.0.{n}.weight": torch.zeros(2, 2) for n in ("x", "context")}
    save_file(sd3, str(tmp_path / "sd3.safetensors"))
    with pytest.raises(CheckpointError, match="Stable Diffusion 3"):
        identify(tmp_path / "sd3.safetensors")

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FormatError, match="not a PyTorch file"):
        identify(broken)
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(FormatError, match=r"unknown file type '\.zip'"):
        identify(archive)
    with pytest.raises(FormatError, match="file not found"):
        identify(tmp_path / "nope.pt")
