"""Embedding cards: A1111's cards decode; ours are pixel-identical to A1111's and survive chunk stripping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from liandan.errors import FormatError
from liandan.formats.a1111_pickle import load_pt
from liandan.formats.embedding_card import (
    CHUNK_KEY,
    data_to_b64,
    extract_data_blocks,
    insert_data_blocks,
    read_card,
    write_card,
)

STEPS = ["goldti-2", "goldti-4"]


def _run(fixtures_dir: Path) -> Path:
    return fixtures_dir / "textual_inversion" / "2026-11-25" / "goldti"


def _data(vectors: torch.Tensor, name: str = "card", step: int = 7) -> dict:
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors},
        "name": name,
        "step": step,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "model",
    }


@pytest.mark.parametrize("stem", STEPS)
def test_a1111_cards_read_back_to_their_pt(fixtures_dir: Path, stem: str) -> None:
    card = _run(fixtures_dir) / "image_embeddings" / f"{stem}.png"
    expected = load_pt(_run(fixtures_dir) / "embeddings" / f"{stem}.pt")
    from_chunk = read_card(card)
    with Image.open(card) as image:
        from_blocks = extract_data_blocks(image)
    for data in (from_chunk, from_blocks):
        assert data is not None
        assert torch.equal(data["string_to_param"]["*"].float(), expected["string_to_param"]["*"])
        assert {k: data[k] for k in ("name", "step", "sd_checkpoint")} == {
            k: expected[k] for k in ("name", "step", "sd_checkpoint")
        }


@pytest.mark.parametrize("stem", STEPS)
def test_our_encoder_reproduces_a1111_cards_exactly(fixtures_dir: Path, stem: str) -> None:
    with Image.open(_run(fixtures_dir) / "image_embeddings" / f"{stem}.png") as card:
        pixels = np.array(card.convert("RGB"))
        chunk = card.text[CHUNK_KEY]
    data = load_pt(_run(fixtures_dir) / "embeddings" / f"{stem}.pt")
    black = np.where((pixels & 0x0F).sum(axis=(0, 2)) == 0)[0]
    picture = Image.fromarray(pixels[:, black.min() + 1 : black.max()])

    assert np.array_equal(np.array(insert_data_blocks(picture, data)), pixels)
    assert data_to_b64(data).decode() == chunk


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_written_card_decodes_exactly_with_and_without_chunks(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    vectors = torch.randn(4, 48) * 0.05
    picture = Image.new("RGB", (64, 64), (200, 120, 40))
    path = write_card(tmp_path / f"card{suffix}", picture, _data(vectors), ("model", "[0123456789]", "4v 7s"))

    data = read_card(path)
    assert torch.equal(data["string_to_param"]["*"].float(), vectors)
    assert data["name"] == "card" and data["step"] == 7

    stripped = tmp_path / "stripped.png"  # the pixels only: what an image host leaves of it
    with Image.open(path) as image:
        Image.fromarray(np.array(image.convert("RGB"))).save(stripped)
    with Image.open(stripped) as image:
        assert CHUNK_KEY not in getattr(image, "text", {})
    assert torch.equal(read_card(stripped)["string_to_param"]["*"].float(), vectors)


def test_caption_changes_the_picture_but_not_the_data(tmp_path: Path) -> None:
    vectors = torch.linspace(-1, 1, 2 * 32).reshape(2, 32)
    picture = Image.new("RGB", (128, 128), (90, 160, 220))
    path = write_card(tmp_path / "c.png", picture, _data(vectors, name="mystyle"), ("model", "[x]", "2v 0s"))
    with Image.open(path) as card:
        black = np.where((np.array(card) & 0x0F).sum(axis=(0, 2)) == 0)[0]
        middle = np.array(card)[:, black.min() + 1 : black.max()]
    assert middle.shape == (128, 128, 3)
    assert not np.array_equal(middle, np.array(picture))  # gradient and text drawn


def test_zero_vectors_still_make_a_card(tmp_path: Path) -> None:
    path = write_card(
        tmp_path / "z.png", Image.new("RGB", (64, 64)), _data(torch.zeros(1, 32)), ("a", "b", "c")
    )
    with Image.open(path) as image:
        data = extract_data_blocks(image)
    assert data is not None and torch.equal(data["string_to_param"]["*"].float(), torch.zeros(1, 32))


def test_plain_image_is_not_a_card(tmp_path: Path, fixtures_dir: Path) -> None:
    with pytest.raises(FormatError, match=r"goldti-2\.png.*no embedding"):
        read_card(_run(fixtures_dir) / "images" / "goldti-2.png")
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"not an image")
    with pytest.raises(FormatError, match=r"x\.png"):
        read_card(garbage)
    with pytest.raises(FormatError, match=r"png or \.webp"):
        write_card(tmp_path / "c.jpg", Image.new("RGB", (8, 8)), _data(torch.ones(1, 4)), ("a", "b", "c"))
