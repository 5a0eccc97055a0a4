import json

import pytest
import torch

from liandan.errors import CheckpointError
from liandan.models.diffusers_folder import load_diffusers_folder
from liandan.models.loading import load_bundle
from liandan.models.tiny import tiny_bundle


def _save_folder(bundle, folder):
    index = {"_class_name": "StableDiffusionPipeline"}
    bundle.unet.save_pretrained(folder / "unet")
    bundle.vae.save_pretrained(folder / "vae")
    bundle.noise_scheduler.save_pretrained(folder / "scheduler")
    for i, (te, tok) in enumerate(zip(bundle.text_encoders, bundle.tokenizers)):
        suffix = "" if i == 0 else "_2"
        te.save_pretrained(folder / f"text_encoder{suffix}")
        tok.save_pretrained(folder / f"tokenizer{suffix}")
        index[f"text_encoder{suffix}"] = ["transformers", type(te).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_diffusers_folder_loads_to_the_same_weights(family, tmp_path):
    bundle = tiny_bundle(family)
    _save_folder(bundle, tmp_path / "model")
    loaded = load_bundle(tmp_path / "model")
    assert (loaded.family, loaded.prediction_type) == (bundle.family, bundle.prediction_type)
    assert [t.pad_token for t in loaded.tokenizers] == [t.pad_token for t in bundle.tokenizers]
    for a, b in zip(bundle.text_encoders, loaded.text_encoders):
        assert torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)
    assert torch.equal(bundle.unet.conv_out.weight, loaded.unet.conv_out.weight)


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        load_diffusers_folder(tmp_path)
