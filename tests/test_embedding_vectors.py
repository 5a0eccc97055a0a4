"""Embedding vectors: A1111's init rule, SDXL pairs, the trainable module, and Create (names, overwrite,
the vector limit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from a1111_safe_unpickler import check_pt

from liandan.errors import ConfigError
from liandan.formats.embedding import load_embedding
from liandan.host.standalone import StandaloneHost
from liandan.jobs import TextualInversionJob
from liandan.methods.textual_inversion import create_embedding
from liandan.models.embedding_vectors import TrainableEmbedding, new_embedding
from liandan.models.tiny import tiny_bundle


def test_new_embedding_copies_the_init_texts_token_rows_like_a1111() -> None:
    bundle = tiny_bundle("sd1")
    ids = bundle.tokenizers[0]("a photo", add_special_tokens=False)["input_ids"]
    table = bundle.text_encoders[0].get_input_embeddings().weight.detach()
    embedding = new_embedding(bundle, "cat", "a photo", 5)
    assert embedding.vectors["*"].shape == (5, 32) and embedding.step == 0
    # A1111: vec[i] = embedded[i * tokens // vectors] for two tokens over five vectors: 0 0 0 1 1
    for i, token in enumerate([0, 0, 0, 1, 1]):
        assert torch.equal(embedding.vectors["*"][i], table[ids[token]])
    # more tokens than vectors: cut to the first n tokens, as A1111's tokenizer call does
    one = new_embedding(bundle, "cat", "a photo of a cat", 1)
    assert torch.equal(one.vectors["*"][0], table[ids[0]])
    assert not new_embedding(bundle, "zero", "", 2).vectors["*"].any()


def test_sdxl_creates_a_clip_l_clip_g_pair_from_each_encoders_table() -> None:
    bundle = tiny_bundle("sdxl")
    embedding = new_embedding(bundle, "pair", "a photo", 2)
    assert set(embedding.vectors) == {"clip_l", "clip_g"}
    assert embedding.vectors["clip_l"].shape == (2, 64) and embedding.vectors["clip_g"].shape == (2, 128)
    ids = bundle.tokenizers[1]("a photo", add_special_tokens=False)["input_ids"]
    table_g = bundle.text_encoders[1].get_input_embeddings().weight.detach()
    assert torch.equal(embedding.vectors["clip_g"][1], table_g[ids[1]])


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "...", " ", "my*cat?!"])
def test_bad_names_are_refused_when_the_job_is_made(name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        TextualInversionJob(name=name)


def test_create_embedding_writes_a_file_a1111_loads_and_refuses_to_clobber(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    path = create_embedding(host, TextualInversionJob(name="newemb", init_text="a photo", vectors=2))
    assert path == host.folders.embeddings / "newemb.pt"
    check_pt(path)
    loaded = load_embedding(path)
    assert loaded.name == "newemb" and loaded.step == 0 and loaded.single.shape == (2, 32)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        create_embedding(host, TextualInversionJob(name="newemb", init_text="other words", vectors=4))
    assert path.read_bytes() == before  # nothing lost
    create_embedding(host, TextualInversionJob(name="newemb", vectors=4, overwrite=True))
    assert load_embedding(path).single.shape == (4, 32)
    with pytest.raises(ConfigError, match="out of range"):
        TextualInversionJob(name="big", vectors=76)


def test_trainable_embedding_keeps_keys_and_round_trips_its_state() -> None:
    pair = {"clip_l": torch.ones(2, 64, dtype=torch.float16), "clip_g": torch.zeros(2, 128)}
    vectors = TrainableEmbedding(pair)
    prompt = vectors.as_prompt_embedding()
    assert set(prompt) == {"clip_l", "clip_g"} and prompt["clip_l"].dtype == torch.float32
    saved = vectors.state()
    with torch.no_grad():
        vectors.params[0].add_(1)
    assert torch.equal(vectors.detached()["clip_l"], torch.full((2, 64), 2.0))
    vectors.load_state(saved)
    assert torch.equal(vectors.detached()["clip_l"], torch.ones(2, 64))
    single = TrainableEmbedding({"*": torch.zeros(3, 32)}).as_prompt_embedding()
    assert isinstance(single, torch.nn.Parameter) and single.shape == (3, 32)
