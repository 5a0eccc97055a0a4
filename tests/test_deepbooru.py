from __future__ import annotations

import pytest
import torch
from PIL import Image
from preprocess_models import make_deepbooru_file

from liandan.errors import CheckpointError
from liandan.preprocess.deepbooru import REAL_TAG_COUNT, DeepbooruCaptioner, DeepDanbooruModel, load_deepbooru
from liandan.preprocess.tag_format import TagFormat

TAGS = ["long_hair", "hat", "red_(eyes)", "smile", "rating:safe", "sky"]


def test_real_network_has_a1111_parameter_names_and_shapes() -> None:
    with torch.device("meta"):
        model = DeepDanbooruModel([f"t{i}" for i in range(REAL_TAG_COUNT)])
    state = model.state_dict()
    assert len(state) == 179 + 178  # n_Conv_0..178; the head has no bias
    assert state["n_Conv_0.weight"].shape == (64, 3, 7, 7)
    assert state["n_Conv_1.weight"].shape == (256, 64, 1, 1)  # stage 1 projection comes first
    assert state["n_Conv_13.weight"].shape == (128, 128, 3, 3)
    assert state["n_Conv_36.weight"].shape == (1024, 512, 1, 1)
    assert state["n_Conv_97.weight"].shape == (256, 1024, 1, 1)  # stage 4: block first...
    assert state["n_Conv_100.weight"].shape == (1024, 1024, 1, 1)  # ...then its projection
    assert model.n_Conv_100.stride == (2, 2) and model.n_Conv_98.stride == (2, 2)
    assert state["n_Conv_168.weight"].shape == (4096, 2048, 1, 1)
    assert state["n_Conv_178.weight"].shape == (REAL_TAG_COUNT, 4096, 1, 1)
    assert "n_Conv_178.bias" not in state
    assert sum(v.numel() for v in state.values()) == 160_956_544


def test_file_round_trip_and_tag_rules(tmp_path) -> None:
    path = make_deepbooru_file(tmp_path / "model-resnet_custom_v3.pt", TAGS)
    model = load_deepbooru(path)
    assert model.tags == TAGS and model.width_divisor == 16
    images = [Image.new("RGB", (100, 60), "white"), Image.new("RGBA", (20, 30), (0, 0, 0, 0))]
    captioner = DeepbooruCaptioner(model, TagFormat())
    # even-indexed tags score > 0.5 by construction; rating: is dropped; sorted; spaces; escaped
    assert captioner.caption(images) == [r"long hair, red \(eyes\)"] * 2
    scores = captioner.scores(images[:1])[0]
    assert scores["long_hair"] > 0.5 > scores["hat"]
    by_score = DeepbooruCaptioner(model, TagFormat(threshold=0.0, sort="score", filter_tags="hat, sky"))
    tags = by_score.caption(images[:1])[0].split(", ")
    assert set(tags) == {"long hair", r"red \(eyes\)", "smile"} and tags[-1] == "smile"


def test_batched_scores_equal_single_image_scores(tmp_path) -> None:
    captioner = DeepbooruCaptioner(load_deepbooru(make_deepbooru_file(tmp_path / "m.pt", TAGS)), TagFormat())
    a, b = Image.new("RGB", (64, 64), "red"), Image.linear_gradient("L").convert("RGB")
    together = captioner.scores([a, b])
    assert together[1] == pytest.approx(captioner.scores([b])[0], abs=1e-5)


def test_bad_files_are_typed_errors(tmp_path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_deepbooru(tmp_path / "junk.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="layout"):
        load_deepbooru(tmp_path / "other.pt")


@pytest.mark.slow
def test_real_size_network_tags_a_512_image(tmp_path) -> None:
    """The full-width network (about 123 M parameters with 6 tags) saved, loaded and run once."""
    path = make_deepbooru_file(tmp_path / "model-resnet_custom_v3.pt", TAGS, width_divisor=1)
    model = load_deepbooru(path)
    assert model.width_divisor == 1
    caption = DeepbooruCaptioner(model, TagFormat()).caption([Image.new("RGB", (512, 512), "gray")])
    assert caption == [r"long hair, red \(eyes\)"]
