import shutil

import pytest
import torch
from safetensors import safe_open

from liandan.errors import CheckpointError
from liandan.models.loading import _is_v_prediction_sd2, bundle_short_hash, checkpoint_short_hash, load_bundle
from liandan.models.tiny import tiny_bundle


@pytest.fixture
def webui_tree(fixtures_dir, tmp_path):
    """A WebUI-like tree with the fixture model and its tiny-clip where A1111 looks for it."""
    models = tmp_path / "webui" / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    for name in ("tiny-sd1.safetensors", "tiny-sd1.yaml"):
        shutil.copy(fixtures_dir / "model" / name, models / "Stable-diffusion" / name)
    shutil.copytree(fixtures_dir / "tiny-clip", models / "tiny-clip")
    return models / "Stable-diffusion" / "tiny-sd1.safetensors"


def test_fixture_tiny_sd1_loads_with_its_yaml_and_clip_folder(webui_tree):
    bundle = load_bundle(webui_tree)
    assert (bundle.family, bundle.prediction_type, bundle.name) == ("sd1", "epsilon", "tiny-sd1")
    assert bundle.info["clip_config"] == "models/tiny-clip"
    assert bundle.text_encoders[0].config.num_attention_heads == 2  # from tiny-clip/config.json
    assert not any(
        p.is_meta for m in (bundle.unet, bundle.vae, *bundle.text_encoders) for p in m.parameters()
    )
    with safe_open(str(webui_tree), "pt") as f:
        proj = f.get_tensor("first_stage_model.encoder.mid.attn_1.proj_out.weight")
        qkv_free = f.get_tensor("model.diffusion_model.middle_block.1.proj_out.weight")
    assert torch.equal(bundle.vae.encoder.mid_block.attentions[0].to_out[0].weight, proj[:, :, 0, 0])
    assert torch.equal(bundle.unet.mid_block.attentions[0].proj_out.weight, qkv_free)
    assert bundle.short_hash is None  # hashing is lazy
    assert bundle_short_hash(bundle) == "86f83915b6"  # A1111's title: tiny-sd1.safetensors [86f83915b6]


def test_fixture_without_its_yaml_is_refused_with_a_hint(webui_tree):
    webui_tree.with_suffix(".yaml").unlink()
    with pytest.raises(CheckpointError, match=r"tiny-sd1\.yaml"):
        load_bundle(webui_tree)


def test_without_the_clip_folder_text_config_is_inferred_from_shapes(webui_tree):
    shutil.rmtree(webui_tree.parents[1] / "tiny-clip")
    bundle = load_bundle(webui_tree)
    config = bundle.text_encoders[0].config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (32, 37, 2)


def test_dtype_and_ckpt_nested_under_state_dict(tmp_path):
    from liandan.models.saving import ldm_state_dict

    bundle = tiny_bundle("sd1")
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": ldm_state_dict(bundle), "global_step": 5}, path)
    (tmp_path / "m.yaml").write_text(_yaml_of(bundle, tmp_path))
    loaded = load_bundle(path, dtype=torch.float16)
    assert loaded.unet.conv_in.weight.dtype == torch.float16
    assert torch.equal(loaded.unet.conv_in.weight, bundle.unet.conv_in.weight.half())
    assert loaded.ldm_extras["alphas_cumprod"].dtype == torch.float32


def _yaml_of(bundle, tmp_path):
    from liandan.models.saving import save_checkpoint

    save_checkpoint(bundle, tmp_path / "tmp.safetensors")
    return (tmp_path / "tmp.yaml").read_text()


def test_short_hash_is_sha256_prefix(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert checkpoint_short_hash(path) == "ba7816bf8f"


def test_sd2_v_prediction_probe_follows_a1111():
    unet = tiny_bundle("sd2").unet
    with torch.no_grad():
        unet.conv_out.bias.fill_(-5.0)  # output far below the 0.5 input: A1111 calls this v-prediction
    assert _is_v_prediction_sd2(unet)
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(0.5)  # output equals the input: epsilon
    assert not _is_v_prediction_sd2(unet)


def test_a_ckpt_that_pickles_code_is_refused_in_one_plain_line(tmp_path) -> None:
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "x": Payload()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert message == (
        f"{path}: unreadable or truncated (it refers to posix.system, which a weights-only load refuses; "
        "nothing in it was run)"
    )
    assert not (tmp_path / "pwned").exists()
