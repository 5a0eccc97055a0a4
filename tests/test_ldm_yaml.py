import pytest

from liandan.errors import CheckpointError
from liandan.models.ldm_yaml import configs_from_yaml, read_yaml, yaml_text
from liandan.models.tiny import tiny_spec

_FIELDS = (
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "down_block_types",
    "up_block_types",
    "use_linear_projection",
)


def test_fixture_yaml_gives_the_tiny_sd1_architecture(fixtures_dir):
    found = configs_from_yaml(read_yaml(fixtures_dir / "model" / "tiny-sd1.yaml"))
    spec = tiny_spec("sd1")
    assert {k: found["unet"][k] for k in _FIELDS} == {k: spec.unet[k] for k in _FIELDS}
    assert found["vae"]["block_out_channels"] == [32, 32, 32, 32]
    assert (found["prediction_type"], found["clip_version"]) == ("epsilon", "models/tiny-clip")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_written_yaml_reads_back_to_the_same_configs(family, tmp_path):
    spec = tiny_spec(family)
    widths = [te.config["hidden_size"] for te in spec.text_encoders]
    path = tmp_path / "m.yaml"
    path.write_text(yaml_text(family, spec.unet, spec.vae, spec.scheduler, widths, clip_version="models/c"))
    found = configs_from_yaml(read_yaml(path))
    for key in (*_FIELDS, "transformer_layers_per_block", "addition_time_embed_dim"):
        expected = spec.unet.get(key, 1 if key == "transformer_layers_per_block" else None)
        got = found["unet"].get(key)
        if key == "transformer_layers_per_block" and not isinstance(expected, list):
            expected = [expected] * len(spec.unet["block_out_channels"])
        assert got == expected, key
    assert found["prediction_type"] == spec.prediction_type
    assert found["vae"]["scaling_factor"] == spec.vae["scaling_factor"]


def test_broken_yaml_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match=r"m\.yaml"):
        read_yaml(path)
