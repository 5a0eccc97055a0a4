import pytest
import torch

from liandan.models.ldm_layout import key_plan, to_ldm_tensor, to_module_tensors
from liandan.models.model_spec import build_modules, standard_spec


def _plan(family):
    spec = standard_spec(family)
    text_encoders, unet, vae = build_modules(spec, empty=True)
    modules = {"unet": unet, "vae": vae, **{f"text_encoder_{i}": te for i, te in enumerate(text_encoders)}}
    return key_plan(spec, modules), modules


@pytest.mark.parametrize(
    ("family", "known_keys"),
    [
        (
            "sd1",
            [
                "model.diffusion_model.output_blocks.2.1.conv.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias",
            ],
        ),
        (
            "sd2",
            [
                "model.diffusion_model.output_blocks.8.2.conv.weight",
                "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight",
                "cond_stage_model.model.positional_embedding",
            ],
        ),
        (
            "sdxl",
            [
                "model.diffusion_model.label_emb.0.2.weight",
                "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight",
                "conditioner.embedders.1.model.text_projection",
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            ],
        ),
    ],
)
def test_released_architectures_map_to_the_known_ldm_names(family, known_keys):
    plan, modules = _plan(family)
    ldm_keys = [k.ldm_key for k in plan]
    assert len(ldm_keys) == len(set(ldm_keys))  # a bijection
    assert set(known_keys) <= set(ldm_keys)
    covered = sum(len(k.names) for k in plan)
    assert covered == sum(len(list(m.named_parameters())) for m in modules.values())


def test_sd1_has_the_key_counts_of_a_released_sd15():
    plan, _ = _plan("sd1")
    prefixes = [k.ldm_key.split(".")[0] for k in plan]
    # SD1.5's state dict: 686 UNet, 248 VAE, 196 text tensors (position_ids is a buffer, kept as an extra)
    assert (
        prefixes.count("model"),
        prefixes.count("first_stage_model"),
        prefixes.count("cond_stage_model"),
    ) == (686, 248, 196)


def test_transforms_are_inverse():
    from liandan.models.ldm_layout import KeyMap

    for transform, tensor in [
        ("conv1x1", torch.randn(8, 8, 1, 1)),
        ("qkv", torch.randn(12, 4)),
        ("transpose", torch.randn(4, 6)),
        ("copy", torch.randn(3)),
    ]:
        key_map = KeyMap("k", "c", ("a", "b", "c") if transform == "qkv" else ("a",), transform)
        assert torch.equal(to_ldm_tensor(key_map, to_module_tensors(key_map, tensor)), tensor)
