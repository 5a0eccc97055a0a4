"""Embeddings: every layout A1111 reads, the files we write, family checks, init rule, names, .optim."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from a1111_safe_unpickler import check_pt
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from liandan.errors import ConfigError, FormatError
from liandan.formats.a1111_pickle import load_pt, save_pt_a1111
from liandan.formats.embedding import (
    Embedding,
    check_family,
    init_vectors,
    load_embedding,
    load_embedding_optimizer,
    save_embedding_card,
    save_embedding_diffusers,
    save_embedding_optimizer,
    save_embedding_pt,
    save_embedding_safetensors,
    validate_num_vectors,
)


def _a1111_checksum(vec: torch.Tensor) -> str:
    """A1111 v1.10.1 Embedding.checksum, element by element as it runs there."""
    r = 0
    for v in vec.reshape(-1) * 100:
        r = (r * 281 ^ int(v) * 997) & 0xFFFFFFFF
    return f"{r & 0xFFFF:04x}"


def _sd1(n: int = 3, width: int = 32, name: str = "emb") -> Embedding:
    torch.manual_seed(n * width)
    return Embedding(name, {"*": torch.randn(n, width) * 0.1}, step=5, sd_checkpoint="86f83915b6")


def test_golden_pt_reads_as_a1111_does(fixtures_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.pt"
    shutil.copy(fixtures_dir / "embeddings" / "goldti.pt", copy)
    emb = load_embedding(copy)
    assert emb.name == "renamed"  # A1111 names .pt embeddings by file stem, not the stored name
    assert emb.widths == [32] and emb.num_vectors == 3 and not emb.is_sdxl
    assert (emb.step, emb.sd_checkpoint, emb.sd_checkpoint_name) == (4, "86f83915b6", "tiny-sd1")
    assert emb.single.dtype == torch.float32 and not emb.single.requires_grad


def test_pt_written_back_has_a1111s_exact_dict(fixtures_dir: Path, tmp_path: Path) -> None:
    source = fixtures_dir / "embeddings" / "goldti.pt"
    written = save_embedding_pt(load_embedding(source), tmp_path / "goldti.pt")
    check_pt(written)
    original, ours = load_pt(source), load_pt(written)
    assert list(ours) == list(original)
    assert ours["string_to_token"] == {"*": 265}
    assert torch.equal(ours["string_to_param"]["*"], original["string_to_param"]["*"])
    assert all(ours[k] == original[k] for k in ("name", "step", "sd_checkpoint", "sd_checkpoint_name"))


def test_golden_safetensors(fixtures_dir: Path) -> None:
    emb = load_embedding(fixtures_dir / "step4_handmade" / "embeddings" / "goldst.safetensors")
    assert (emb.name, emb.widths, emb.num_vectors, emb.step) == ("goldst", [32], 2, None)
    wide = load_embedding(fixtures_dir / "step4_handmade" / "embeddings" / "goldst768.safetensors")
    with pytest.raises(FormatError, match=r"goldst768\.safetensors.*\(1, 768\).*32.*another model family"):
        check_family(wide, [32])


def test_card_reads_with_its_stored_name(fixtures_dir: Path) -> None:
    run = fixtures_dir / "textual_inversion" / "2026-11-25" / "goldti"
    emb = load_embedding(run / "image_embeddings" / "goldti-4.png")
    expected = load_embedding(run / "embeddings" / "goldti-4.pt")
    assert emb.name == "goldti-4" and emb.step == 3
    assert torch.equal(emb.single, expected.single)


def test_safetensors_round_trip_sd1_and_a1111_layout(tmp_path: Path) -> None:
    emb = _sd1()
    path = save_embedding_safetensors(emb, tmp_path / "mine.safetensors")
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["emb_params"]  # one tensor: A1111 loads it as a concept
        assert f.metadata()["step"] == "5"
    back = load_embedding(path)
    assert torch.equal(back.single, emb.single)
    assert (back.name, back.step, back.sd_checkpoint) == ("mine", 5, "86f83915b6")


def test_sdxl_pair_round_trip_and_family_check(tmp_path: Path) -> None:
    emb = Embedding("xl", {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)})
    back = load_embedding(save_embedding_safetensors(emb, tmp_path / "xl.safetensors"))
    assert back.is_sdxl and back.widths == [768, 1280]
    assert torch.equal(back.vectors["clip_g"], emb.vectors["clip_g"])
    check_family(back, [768, 1280])
    with pytest.raises(FormatError, match=r"xl\.safetensors.*clip_l.*\(2, 768\).*another model family"):
        check_family(back, [768])
    with pytest.raises(FormatError, match="SDXL pair"):
        save_embedding_pt(back, tmp_path / "xl.pt")


def test_sd1_vector_on_sd2_is_refused() -> None:
    with pytest.raises(FormatError, match=r"\(3, 768\).*1024"):
        check_family(_sd1(width=768), [1024])
    check_family(_sd1(width=1024), [1024])


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_diffusers_learned_embeds(tmp_path: Path, suffix: str) -> None:
    emb = _sd1(n=1)
    path = save_embedding_diffusers(emb, tmp_path / f"learned_embeds{suffix}", "<my-token>")
    raw = load_pt(path) if suffix == ".bin" else None
    if raw is not None:
        check_pt(path)
        assert list(raw) == ["<my-token>"]
    back = load_embedding(path)
    assert back.name == "learned_embeds" and torch.equal(back.single, emb.single)


def test_one_dimensional_concept_is_unsqueezed(tmp_path: Path) -> None:
    path = tmp_path / "concept.bin"
    save_pt_a1111({"<cat-toy>": torch.arange(32.0)}, path)
    assert load_embedding(path).single.shape == (1, 32)
    st = tmp_path / "concept2.safetensors"
    save_file({"string_to_param.*": torch.ones(2, 32)}, str(st))
    assert load_embedding(st).single.shape == (2, 32)


@pytest.mark.parametrize(
    "content",
    [
        {"string_to_param": {"a": torch.ones(1, 4), "b": torch.ones(1, 4)}},
        {"a": torch.ones(1, 4), "b": torch.ones(1, 4)},
        {"string_to_param": {"*": "text"}},
        {"step": 3},
        [torch.ones(2)],
    ],
)
def test_unrecognised_content(tmp_path: Path, content: object) -> None:
    path = save_pt_a1111(content, tmp_path / "odd.pt")
    with pytest.raises(FormatError, match=r"odd\.pt"):
        load_embedding(path)


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"\.ckpt"):
        load_embedding(tmp_path / "x.ckpt")


def test_checksum_matches_a1111() -> None:
    torch.manual_seed(1)
    for vec in (torch.randn(3, 32), torch.randn(8, 768) * 0.02, torch.zeros(1, 16), -torch.rand(2, 8) * 5):
        assert Embedding("e", {"*": vec}).checksum() == _a1111_checksum(vec)


def test_optimizer_sidecar(tmp_path: Path) -> None:
    emb = _sd1()
    vec = emb.single.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([vec], lr=0.005, weight_decay=0.0)
    (vec**2).sum().backward()
    optimizer.step()
    emb.vectors["*"] = vec.detach()
    path = save_embedding_pt(emb, tmp_path / "emb.pt")
    sidecar = save_embedding_optimizer(path, emb, optimizer.state_dict())
    assert sidecar.name == "emb.pt.optim"
    check_pt(sidecar)
    assert load_pt(sidecar)["hash"] == _a1111_checksum(emb.single)
    state = load_embedding_optimizer(path, emb)
    assert state is not None
    torch.optim.AdamW([vec], lr=0.005).load_state_dict(state)

    emb.vectors["*"] = emb.single + 1  # other vectors: the state is stale and not used
    assert load_embedding_optimizer(path, emb) is None
    assert load_embedding_optimizer(tmp_path / "none.pt", emb) is None


def test_card_written_from_embedding(tmp_path: Path) -> None:
    emb = _sd1(n=2)
    path = save_embedding_card(
        emb, Image.new("RGB", (64, 64), "white"), tmp_path / "emb.png", "tiny", "0123abcd"
    )
    back = load_embedding(path)
    assert back.name == "emb" and back.step == 5 and torch.equal(back.single, emb.single)


def test_init_vectors_a1111_rule() -> None:
    tokens = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4)  # two init tokens
    vec = init_vectors(tokens, 5, 4)
    # vec[i] = embedded[i * 2 // 5]: rows 0, 0, 0, 1, 1
    assert [int(row[0]) // 4 for row in vec] == [0, 0, 0, 1, 1]
    assert torch.equal(init_vectors(torch.empty(0, 4), 3, 4), torch.zeros(3, 4))
    assert torch.equal(init_vectors(None, 2, 4), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match=r"\(2, 4\).*8"):
        init_vectors(tokens, 2, 8)


@pytest.mark.parametrize("count", [0, 76, -1, 2.5])
def test_vector_count_bounds(count: object) -> None:
    with pytest.raises(ConfigError, match="1 to 75"):
        validate_num_vectors(count)  # type: ignore[arg-type]


def test_a_usage_note_survives_pt_and_safetensors_and_a1111_reads_the_pt(tmp_path: Path) -> None:
    emb = _sd1()
    emb.usage = "put x-neg in the negative prompt"
    for path in (
        save_embedding_pt(emb, tmp_path / "u.pt"),
        save_embedding_safetensors(emb, tmp_path / "u.safetensors"),
    ):
        assert load_embedding(path).usage == emb.usage
    check_pt(tmp_path / "u.pt")
    assert "usage" not in load_pt(save_embedding_pt(_sd1(), tmp_path / "plain.pt"))  # A1111's exact dict
