import pytest
import torch

from liandan.models.bundle import text_transformer
from liandan.models.model_spec import assign_tensor, build_modules, spec_of_bundle, standard_spec
from liandan.models.tiny import tiny_bundle


def test_standard_specs_and_v_prediction():
    sd2v = standard_spec("sd2", "v_prediction")
    assert (sd2v.scheduler["prediction_type"], sd2v.unet["upcast_attention"]) == ("v_prediction", True)
    assert standard_spec("sdxl").unet["addition_embed_type"] == "text_time"
    assert [te.pad_token for te in standard_spec("sdxl").text_encoders] == ["<|endoftext|>", "!"]
    with pytest.raises(ValueError, match="flux"):
        standard_spec("flux")


def test_empty_build_uses_no_memory_for_a_full_size_sdxl():
    text_encoders, unet, _ = build_modules(standard_spec("sdxl"), empty=True)
    assert all(p.is_meta for p in unet.parameters())
    assert sum(p.numel() for p in unet.parameters()) > 2_500_000_000
    # buffers stay real so the text encoders' position ids are usable
    assert not text_transformer(text_encoders[0]).embeddings.position_ids.is_meta


def test_assign_tensor_replaces_without_copy_and_rejects_unknown_names():
    _, unet, _ = build_modules(standard_spec("sd1"), empty=True)
    weight = torch.zeros(320, 4, 3, 3)
    assign_tensor(unet, "conv_in.weight", weight)
    assert unet.conv_in.weight.data_ptr() == weight.data_ptr()
    with pytest.raises(KeyError, match="nope"):
        assign_tensor(unet, "conv_in.nope", weight)


def test_spec_of_bundle_recovers_the_layouts():
    spec = spec_of_bundle(tiny_bundle("sdxl"))
    assert [(te.layout, te.with_projection) for te in spec.text_encoders] == [
        ("hf_clip", False),
        ("open_clip", True),
    ]
