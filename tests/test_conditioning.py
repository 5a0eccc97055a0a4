"""Prompt conditioning: A1111's chunking, emphasis, CLIP skip, SDXL, and textual-inversion splicing."""

from __future__ import annotations

import copy

import pytest
import torch

from liandan.errors import ConfigError, FormatError
from liandan.models.bundle import text_transformer
from liandan.models.conditioning import (
    PromptEncoder,
    added_cond_kwargs,
    parse_emphasis,
    sdxl_time_ids,
)
from liandan.models.tiny import tiny_bundle

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def sd1():
    return tiny_bundle("sd1")


@pytest.fixture(scope="module")
def sd2():
    return tiny_bundle("sd2")


@pytest.fixture(scope="module")
def sdxl():
    return tiny_bundle("sdxl")


def _id(bundle, word: str) -> int:
    ids = bundle.tokenizers[0](word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    return ids[0]


def _token_embeddings_seen(encoder):
    """Record the token embeddings the transformer receives (its input minus the position embeddings)."""
    seen = []
    embeddings = text_transformer(encoder).embeddings

    def hook(_module, _inputs, output):
        seen.append((output - embeddings.position_embedding.weight[: output.shape[1]]).detach())

    return seen, embeddings.register_forward_hook(hook)


def test_emphasis_parser_matches_a1111():
    assert parse_emphasis("normal text") == [("normal text", 1.0)]
    assert parse_emphasis("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert parse_emphasis("(unbalanced") == [("unbalanced", 1.1)]
    assert parse_emphasis(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse_emphasis("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    parsed = parse_emphasis("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [text for text, _ in parsed] == ["a ", "house", " ", "on", " a ", "hill", ", sun, ", "sky", "."]
    assert [w for _, w in parsed] == pytest.approx([1.0, 1.573, 1.1, 1.0, 1.1, 0.55, 1.1, 1.4641, 1.1])
    assert parse_emphasis("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]


def test_100_tokens_make_two_chunks_of_77(sd1):
    encoder = PromptEncoder(sd1)
    cat = _id(sd1, "cat")
    tokenized = encoder.tokenize(" ".join(["cat"] * 100))
    first, second = tokenized.chunks
    assert first.tokens == [BOS, *[cat] * 75, EOS]
    assert second.tokens == [BOS, *[cat] * 25, *[EOS] * 51]
    assert tokenized.token_count == 100
    assert encoder.count_tokens(" ".join(["cat"] * 100)) == (100, 150)
    assert encoder.count_tokens("") == (0, 75)
    assert encoder.encode([" ".join(["cat"] * 100)]).context.shape == (1, 154, 32)
    assert encoder.encode([" ".join(["cat"] * 75)]).context.shape == (1, 77, 32)


def test_chunk_breaks_after_a_nearby_comma(sd1):
    cat, dog, comma = _id(sd1, "cat"), _id(sd1, "dog"), _id(sd1, ",")
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    first, second = PromptEncoder(sd1).tokenize(prompt).chunks
    assert first.tokens[:73] == [BOS, *[cat] * 70, comma, EOS]  # the chunk ends at the comma
    assert second.tokens[:12] == [BOS, *[dog] * 10, EOS]
    # without backtracking the chunk is filled to 75 tokens
    first, second = PromptEncoder(sd1, comma_padding_backtrack=0).tokenize(prompt).chunks
    assert first.tokens == [BOS, *[cat] * 70, comma, *[dog] * 4, EOS]
    assert second.tokens[:8] == [BOS, *[dog] * 6, EOS]
    # a comma further back than the limit does not move anything
    far = " ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 30)
    first, _ = PromptEncoder(sd1, comma_padding_backtrack=20).tokenize(far).chunks
    assert first.tokens[-2:] == [dog, EOS]


def test_break_starts_a_new_chunk(sd1):
    chunks = PromptEncoder(sd1).tokenize("cat BREAK dog").chunks
    assert [c.tokens[:3] for c in chunks] == [[BOS, _id(sd1, "cat"), EOS], [BOS, _id(sd1, "dog"), EOS]]


def test_embedding_never_straddles_chunks_and_moves_with_comma_backtrack(sd1):
    encoder = PromptEncoder(sd1)
    embeddings = {"goldti": torch.randn(3, 32)}
    # 74 words leave one slot: the 3-vector embedding goes whole into the next chunk
    first, second = encoder.tokenize(" ".join(["cat"] * 74) + " goldti", embeddings).chunks
    assert first.fixes == [] and first.tokens[75:] == [EOS, EOS]
    assert second.fixes == [(1, "goldti")] and second.tokens[:5] == [BOS, 0, 0, 0, EOS]
    # an embedding after the last comma travels with its placeholders when the chunk is broken at the comma
    prompt = " ".join(["cat"] * 69) + ", goldti " + " ".join(["dog"] * 10)
    first, second = encoder.tokenize(prompt, embeddings).chunks
    assert first.fixes == [] and first.tokens[71] == EOS
    assert second.fixes == [(1, "goldti")] and second.tokens[:4] == [BOS, 0, 0, 0]


def test_emphasis_weights_tokens_and_restores_the_mean(sd1):
    encoder = PromptEncoder(sd1)
    chunk = encoder.tokenize("(cat:1.5) [dog] bird").chunks[0]
    assert chunk.multipliers[:5] == pytest.approx([1.0, 1.5, 1 / 1.1, 1.0, 1.0])
    with torch.no_grad():
        plain = encoder.encode(["cat dog bird"]).context
        weighted = encoder.encode(["(cat:1.5) [dog] bird"]).context
    multipliers = torch.tensor(chunk.multipliers)[None, :, None]
    expected = plain * multipliers * (plain.mean() / (plain * multipliers).mean())
    torch.testing.assert_close(weighted, expected)
    assert not torch.allclose(weighted, plain)
    torch.testing.assert_close(weighted.mean(), plain.mean())


def test_embedding_vectors_are_spliced_at_their_slots_and_get_gradient(sd1):
    encoder = PromptEncoder(sd1)
    vectors = torch.randn(3, 32, requires_grad=True)
    seen, hook = _token_embeddings_seen(sd1.text_encoders[0])
    try:
        cond = encoder.encode(["a painting by goldti", "goldti"], embeddings={"goldti": vectors})
    finally:
        hook.remove()
    tokens = seen[0]
    # "a painting by" are 3 tokens after BOS: the vectors fill slots 4-6 of row 0 and 1-3 of row 1
    torch.testing.assert_close(tokens[0, 4:7], vectors.detach())
    torch.testing.assert_close(tokens[1, 1:4], vectors.detach())
    word_table = sd1.text_encoders[0].get_input_embeddings().weight
    torch.testing.assert_close(tokens[0, 7], word_table[EOS].detach())
    cond.context.sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


def test_half_precision_encoder_takes_float32_vectors_with_gradient(sd1):
    half = copy.deepcopy(sd1)
    half.text_encoders[0].to(torch.bfloat16)
    vectors = torch.randn(3, 32, requires_grad=True)
    cond = PromptEncoder(half).encode(["(art:1.2) by goldti"], embeddings={"goldti": vectors})
    assert cond.context.dtype == torch.bfloat16
    cond.context.float().sum().backward()
    assert vectors.grad is not None and vectors.grad.dtype == torch.float32 and vectors.grad.abs().sum() > 0


def test_longest_embedding_name_wins(sd1):
    encoder = PromptEncoder(sd1)
    short, long = torch.randn(1, 32), torch.randn(2, 32)
    chunk = encoder.tokenize("a my style cat", {"my": short, "my style": long}).chunks[0]
    assert chunk.fixes == [(2, "my style")]
    assert chunk.tokens[:6] == [BOS, _id(sd1, "a"), 0, 0, _id(sd1, "cat"), EOS]
    chunk = encoder.tokenize("a my cat", {"my": short, "my style": long}).chunks[0]
    assert chunk.fixes == [(2, "my")]


def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(sd1):
    text_encoder = sd1.text_encoders[0]
    with torch.no_grad():
        last = PromptEncoder(sd1, clip_skip=1).encode(["a cat"]).context
        skipped = PromptEncoder(sd1, clip_skip=2).encode(["a cat"]).context
        ids = torch.tensor([PromptEncoder(sd1).tokenize("a cat").chunks[0].tokens])
        out = text_encoder(input_ids=ids, output_hidden_states=True)
        expected = text_transformer(text_encoder).final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(last, out.last_hidden_state)
    torch.testing.assert_close(skipped, expected)
    assert not torch.allclose(last, skipped)
    with pytest.raises(ConfigError, match="clip_skip"):
        PromptEncoder(sd1, clip_skip=5)


def test_sd2_pads_with_zero_after_eos_and_uses_the_penultimate_layer(sd2):
    text_encoder = sd2.text_encoders[0]
    seen = []
    hook = text_encoder.get_input_embeddings().register_forward_pre_hook(
        lambda _m, args: seen.append(args[0])
    )
    try:
        with torch.no_grad():
            context = PromptEncoder(sd2, clip_skip=2).encode(["a cat"]).context
    finally:
        hook.remove()
    ids = seen[0]
    assert ids[0, :4].tolist() == [BOS, _id(sd2, "a"), _id(sd2, "cat"), EOS]
    assert (ids[0, 4:] == 0).all()
    with torch.no_grad():
        out = text_encoder(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(
        context, text_transformer(text_encoder).final_layer_norm(out.hidden_states[-2])
    )


def test_sdxl_concatenates_both_encoders_and_pools_g(sdxl):
    encoder = PromptEncoder(sdxl)
    embeddings = {"goldti": {"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 128)}}
    with torch.no_grad():
        cond = encoder.encode(["a cat", "goldti " * 40], embeddings=embeddings)  # 80 slots
    assert cond.context.shape == (2, 154, 64 + 128)
    assert cond.pooled is not None and cond.pooled.shape == (2, 128)

    g = sdxl.text_encoders[1]
    ids = torch.tensor([encoder.tokenize("a cat").chunks[0].tokens])
    ids[0, 4:] = 0  # OpenCLIP padding
    with torch.no_grad():
        out = g(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(cond.context[0, :77, 64:], out.hidden_states[-2][0])
    torch.testing.assert_close(cond.pooled[0], g.text_projection(out.last_hidden_state[0, 3]))

    time_ids = sdxl_time_ids((512, 768), (0, 0), (512, 768))
    assert time_ids.tolist() == [512, 768, 0, 0, 512, 768]
    kwargs = added_cond_kwargs(cond, time_ids)
    assert kwargs["text_embeds"].shape == (2, 128) and kwargs["time_ids"].shape == (2, 6)


def test_sdxl_embedding_gives_each_encoder_its_own_vectors(sdxl):
    vectors = {"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 128)}
    seen_l, hook_l = _token_embeddings_seen(sdxl.text_encoders[0])
    seen_g, hook_g = _token_embeddings_seen(sdxl.text_encoders[1])
    try:
        with torch.no_grad():
            PromptEncoder(sdxl).encode(["by goldti"], embeddings={"goldti": vectors})
    finally:
        hook_l.remove()
        hook_g.remove()
    torch.testing.assert_close(seen_l[0][0, 2:4], vectors["clip_l"])
    torch.testing.assert_close(seen_g[0][0, 2:4], vectors["clip_g"])


def test_shorter_prompts_get_empty_chunks(sd1):
    encoder = PromptEncoder(sd1)
    with torch.no_grad():
        padded = encoder.encode(["a cat", "dog " * 90]).context
        empty = encoder.encode([""]).context
    assert padded.shape == (2, 154, 32)
    torch.testing.assert_close(padded[0, 77:], empty[0])


def test_bad_embeddings_are_refused_with_their_name(sd1, sdxl):
    with pytest.raises(FormatError, match=r"'wide'.*\[n, 32\]"):
        PromptEncoder(sd1).encode(["wide"], embeddings={"wide": torch.randn(2, 768)})
    with pytest.raises(FormatError, match="clip_l"):
        PromptEncoder(sdxl).encode(["x"], embeddings={"x": torch.randn(2, 64)})
    with pytest.raises(FormatError, match="clip_g"):
        PromptEncoder(sd1).encode(["x"], embeddings={"x": {"clip_l": torch.randn(1, 32)}})


@pytest.mark.fixtures
def test_golden_embedding_changes_the_conditioning(sd1, fixtures_dir):
    data = torch.load(fixtures_dir / "embeddings" / "goldti.pt", weights_only=True)
    vectors = data["string_to_param"]["*"]
    assert vectors.shape == (3, 32)
    encoder = PromptEncoder(sd1)
    prompt = "a painting of a red circle, art by goldti"
    with torch.no_grad():
        with_embedding = encoder.encode([prompt], embeddings={"goldti": vectors}).context
        without = encoder.encode([prompt]).context
    assert with_embedding.shape == without.shape == (1, 77, 32)
    assert (with_embedding - without).abs().max() > 1e-3
    assert encoder.tokenize(prompt, {"goldti": vectors}).chunks[0].fixes == [(10, "goldti")]
