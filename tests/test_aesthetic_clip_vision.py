"""The CLIP vision towers of aesthetic embeddings (models/clip_vision.py): choice, files, loading."""

from __future__ import annotations

import pytest
import torch
from open_clip_config import open_clip_config
from PIL import Image

from liandan.errors import CheckpointError, FormatError
from liandan.models.clip_vision import (
    CLIP_G,
    CLIP_H,
    CLIP_L,
    TowerSource,
    load_tower,
    load_towers,
    text_projection,
    tower_sources,
    weight_paths,
)
from liandan.models.tiny import tiny_bundle, tiny_clip_vision
from liandan.preprocess.weights import hub_file

PICTURES = [Image.new("RGB", (40, 56), "red"), Image.new("RGB", (64, 64), (10, 200, 30))]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_the_tiny_towers_match_their_text_encoders_and_are_deterministic(family: str, tmp_path) -> None:
    bundle = tiny_bundle(family)
    before = [p.clone() for p in bundle.text_encoders[0].parameters()]
    towers = load_towers(bundle, tmp_path)  # no file needed, nothing downloaded
    assert len(towers) == len(bundle.text_encoders)
    for index, (tower, encoder) in enumerate(zip(towers, bundle.text_encoders)):
        features = tower.image_features(PICTURES)
        assert features.shape == (2, encoder.config.projection_dim)
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))
        projection = text_projection(bundle, index, tmp_path)
        assert projection.shape == (tower.width, encoder.config.hidden_size)
        again, _ = tiny_clip_vision(family, index)
        torch.testing.assert_close(tower.model.tower.vision_model.embeddings.patch_embedding.weight,
                                   again.vision_model.embeddings.patch_embedding.weight)  # fmt: skip
    # the towers draw from their own seeds: the tiny model's weights are what they always were
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_bundle(family).text_encoders[0].parameters()))


def test_real_widths_get_the_real_towers_and_others_are_refused() -> None:
    assert tower_sources("sd1", [768]) == (CLIP_L,)
    assert tower_sources("sd2", [1024]) == (CLIP_H,)
    assert tower_sources("sdxl", [768, 1280]) == (CLIP_L, CLIP_G)
    with pytest.raises(FormatError, match=r"widths \[512\].*standard widths \[768\]"):
        tower_sources("sd1", [512])


def test_offline_one_message_lists_every_missing_file_and_where_it_goes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    with pytest.raises(CheckpointError) as caught:
        weight_paths(tower_sources("sdxl", [768, 1280]), tmp_path)
    message = str(caught.value)
    assert message.startswith("3 weight files are missing (downloads are off)")
    for expected in (
        f"{tmp_path}/aesthetic_clip/clip-vit-large-patch14/config.json  from https://huggingface.co/openai/",
        f"{tmp_path}/aesthetic_clip/clip-vit-large-patch14/model.safetensors",
        f"{tmp_path}/aesthetic_clip/CLIP-ViT-bigG-14-laion2B-39B-b160k/open_clip_pytorch_model.bin",
    ):
        assert expected in message


def test_a_transformers_clip_folder_in_models_aesthetic_clip_is_used(tmp_path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = {**text, "image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(tmp_path / "aesthetic_clip" / "clip-vit-large-patch14", safe_serialization=True)
    paths = weight_paths([CLIP_L], tmp_path, allow_download=False)
    tower = load_tower(CLIP_L, paths)
    assert (tower.image_size, tower.width) == (32, 16)
    pixels = tower.pixels(PICTURES)
    with torch.no_grad():
        expected = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(
        tower.image_features(PICTURES), torch.nn.functional.normalize(expected, dim=-1)
    )


@pytest.mark.webui_env  # open_clip needs torchvision, which the newest-stack job leaves out
def test_an_open_clip_checkpoint_is_loaded_into_open_clips_own_model(tmp_path, monkeypatch) -> None:
    import open_clip
    from open_clip import factory

    text = {"projection_dim": 24, "max_position_embeddings": 77, "vocab_size": 49408, "hidden_size": 32,
            "num_attention_heads": 2, "num_hidden_layers": 1}  # fmt: skip
    monkeypatch.setitem(factory._MODEL_CONFIGS, "liandan-test-H", open_clip_config(text))
    torch.manual_seed(0)
    model = open_clip.create_model("liandan-test-H").eval()
    weight = hub_file("test/H", "w.bin", "aesthetic_clip")
    source = TowerSource("clip_h", "test/H", 32, "open_clip", (weight,), "liandan-test-H")
    (tmp_path / "aesthetic_clip" / "H").mkdir(parents=True)
    torch.save(model.state_dict(), tmp_path / "aesthetic_clip" / "H" / "w.bin")
    tower = load_tower(source, weight_paths([source], tmp_path, allow_download=False))
    assert tower.width == 24
    with torch.no_grad():
        expected = model.encode_image(tower.pixels(PICTURES), normalize=True)
    torch.testing.assert_close(tower.image_features(PICTURES), expected)


def test_sd2_takes_its_checkpoints_text_projection(tmp_path) -> None:
    bundle = tiny_bundle("sd2")
    stored = torch.randn(64, 64)  # OpenCLIP's [width, features], used as x @ P
    bundle.ldm_extras["cond_stage_model.model.text_projection"] = stored
    torch.testing.assert_close(text_projection(bundle, 0, tmp_path), stored.T)
    xl = tiny_bundle("sdxl")
    torch.testing.assert_close(text_projection(xl, 1, tmp_path), xl.text_encoders[1].text_projection.weight)


def test_a_complete_hugging_face_cache_copy_is_used_and_a_partial_local_folder_is_not(
    tmp_path, monkeypatch
) -> None:
    from liandan.models import clip_vision

    snapshot = tmp_path / "hub" / "snapshot"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_text("{}")
    monkeypatch.setattr(clip_vision, "_hf_cached", lambda weight, repo: snapshot / weight.name)
    local = tmp_path / "models" / "aesthetic_clip" / "clip-vit-large-patch14"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")  # the weights are not beside it: the folder is not used
    paths = weight_paths([CLIP_L], tmp_path / "models", allow_download=False)
    assert paths == [snapshot / "config.json", snapshot / "model.safetensors"]
    (local / "model.safetensors").write_text("{}")
    assert weight_paths([CLIP_L], tmp_path / "models", allow_download=False)[0].parent == local
