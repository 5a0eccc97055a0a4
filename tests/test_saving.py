import pytest
import torch
from safetensors import safe_open

from liandan.errors import CheckpointError
from liandan.models.loading import load_bundle
from liandan.models.model_spec import spec_of_bundle
from liandan.models.saving import is_released_architecture, ldm_schedule_buffers, save_checkpoint
from liandan.models.tiny import tiny_bundle


def _tensors(path):
    if path.suffix == ".ckpt":
        return torch.load(path, weights_only=True)["state_dict"]
    with safe_open(str(path), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def _assert_identical(a, b):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_ldm_bundle_ldm_round_trip_is_bit_identical(family, suffix, tmp_path):
    first = save_checkpoint(tiny_bundle(family), tmp_path / f"a{suffix}")
    assert first.with_suffix(".yaml").is_file()  # tiny shapes need their yaml, as in A1111
    loaded = load_bundle(first)
    assert (loaded.family, loaded.prediction_type) == (
        family,
        "v_prediction" if family == "sd2" else "epsilon",
    )
    second = save_checkpoint(loaded, tmp_path / "b" / f"b{suffix}")
    _assert_identical(_tensors(first), _tensors(second))


def test_fixture_round_trip_keeps_every_key(fixtures_dir, tmp_path):
    import shutil

    for name in ("tiny-sd1.safetensors", "tiny-sd1.yaml"):
        shutil.copy(fixtures_dir / "model" / name, tmp_path / name)
    source = tmp_path / "tiny-sd1.safetensors"
    saved = save_checkpoint(load_bundle(source), tmp_path / "out" / "copy.safetensors")
    _assert_identical(_tensors(source), _tensors(saved))


def test_regenerated_schedule_buffers_equal_ldms(fixtures_dir):
    with safe_open(str(fixtures_dir / "model" / "tiny-sd1.safetensors"), "pt") as f:
        for key, tensor in ldm_schedule_buffers(0.00085, 0.012, 1000).items():
            assert torch.equal(tensor, f.get_tensor(key)), key


def test_half_metadata_and_no_leftovers(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_bundle("sd1"), path, dtype=torch.float16, metadata={"ss_x": "1"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["ss_x"] == "1"
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
        assert (
            f.get_tensor("cond_stage_model.transformer.text_model.embeddings.position_ids").dtype
            == torch.int64
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.yaml"]


def test_bad_suffix_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(CheckpointError, match=r"\.pt"):
        save_checkpoint(tiny_bundle("sd1"), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_released_architecture_needs_no_yaml():
    from liandan.models.model_spec import standard_spec

    assert is_released_architecture(standard_spec("sdxl"))
    assert not is_released_architecture(spec_of_bundle(tiny_bundle("sdxl")))


def test_ckpt_loads_with_a1111s_safe_unpickler_and_bf16(tmp_path):
    from a1111_safe_unpickler import check_pt

    path = save_checkpoint(tiny_bundle("sd1"), tmp_path / "m.ckpt", dtype=torch.bfloat16)
    check_pt(path)  # raises when A1111 would refuse the file
    state = _tensors(path)
    assert state["model.diffusion_model.out.2.weight"].dtype == torch.bfloat16
    assert state["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64


def test_the_yaml_the_model_was_loaded_with_goes_beside_the_copy(fixtures_dir, tmp_path):
    import shutil

    for name in ("tiny-sd1.safetensors", "tiny-sd1.yaml"):
        shutil.copy(fixtures_dir / "model" / name, tmp_path / name)
    saved = save_checkpoint(
        load_bundle(tmp_path / "tiny-sd1.safetensors"), tmp_path / "out" / "copy.safetensors"
    )
    assert (
        saved.with_suffix(".yaml").read_text() == (tmp_path / "tiny-sd1.yaml").read_text()
    )  # its CLIP folder
