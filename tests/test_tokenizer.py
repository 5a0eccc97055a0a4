import json

from liandan.models.tokenizer import (
    CLIP_L_PAD,
    OPEN_CLIP_PAD,
    clip_tokenizer,
    vocab_and_merges,
    write_tokenizer_files,
)


def test_vocab_and_merges_equal_openai_clip_files(fixtures_dir):
    # the fixture's tiny-clip folder carries openai/clip-vit-large-patch14's tokenizer files
    vocab, merges = vocab_and_merges()
    assert json.loads(vocab) == json.loads((fixtures_dir / "tiny-clip" / "vocab.json").read_text("utf-8"))
    assert merges == (fixtures_dir / "tiny-clip" / "merges.txt").read_text("utf-8")


def test_pad_tokens_of_clip_l_and_open_clip():
    clip_l, open_clip = clip_tokenizer(CLIP_L_PAD), clip_tokenizer(OPEN_CLIP_PAD)
    ids_l = clip_l("a photo of a cat", padding="max_length", max_length=10).input_ids
    ids_g = open_clip("a photo of a cat", padding="max_length", max_length=10).input_ids
    assert ids_l == [49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407, 49407]
    assert ids_g == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]
    assert clip_l.model_max_length == 77


def test_each_call_returns_an_independent_copy():
    first = clip_tokenizer()
    first.add_tokens(["<my-embedding>"])
    assert len(clip_tokenizer()) == 49408
    assert len(first) == 49409


def test_written_folder_loads_with_from_pretrained(tmp_path):
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(tmp_path / "tok", OPEN_CLIP_PAD)
    loaded = CLIPTokenizer.from_pretrained(folder)
    assert loaded.pad_token_id == 0
    assert loaded("hello").input_ids == clip_tokenizer()("hello").input_ids
