import pytest
import torch

from liandan.errors import CheckpointError
from liandan.models.diffusers_folder import load_diffusers_folder, save_diffusers_folder
from liandan.models.loading import load_bundle
from liandan.models.tiny import tiny_bundle


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_diffusers_folder_loads_to_the_same_weights(family, tmp_path):
    bundle = tiny_bundle(family)
    save_diffusers_folder(bundle, tmp_path / "model")
    loaded = load_bundle(tmp_path / "model")
    assert (loaded.family, loaded.prediction_type) == (bundle.family, bundle.prediction_type)
    assert [t.pad_token for t in loaded.tokenizers] == [t.pad_token for t in bundle.tokenizers]
    for a, b in zip(bundle.text_encoders, loaded.text_encoders):
        assert torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)
    assert torch.equal(bundle.unet.conv_out.weight, loaded.unet.conv_out.weight)


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        load_diffusers_folder(tmp_path)
