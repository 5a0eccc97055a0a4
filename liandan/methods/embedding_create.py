"""Creating a textual-inversion embedding and finding the one a job continues.

Creation follows A1111's `create_embedding`: the init text is tokenized without BOS/EOS, cut to as many
tokens as the embedding has vectors, and vector i copies the token embedding at `i * tokens // vectors`
(zeros without init text). SDXL gets a clip_l + clip_g pair, each from its own encoder's embedding table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from liandan.errors import ConfigError
from liandan.formats.embedding import (
    SDXL_KEYS,
    SINGLE_KEY,
    Embedding,
    check_family,
    init_vectors,
    load_embedding,
    sanitize_name,
    save_embedding_pt,
    save_embedding_safetensors,
    validate_num_vectors,
)

if TYPE_CHECKING:
    from liandan.host.base import Host
    from liandan.models.bundle import ModelBundle

# the suffixes A1111 lists as embeddings, in the order we look for an existing one
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin", ".png", ".webp")


def encoder_keys(bundle: ModelBundle) -> tuple[str, ...]:
    """The embedding's vector keys, one per text encoder of the bundle."""
    return SDXL_KEYS if bundle.is_sdxl else (SINGLE_KEY,)


def init_token_embeddings(
    bundle: ModelBundle, encoder_index: int, init_text: str, count: int
) -> torch.Tensor:
    """Token-embedding rows of `init_text` (at most `count` tokens, no BOS/EOS) from one text encoder."""
    tokenizer = bundle.tokenizers[encoder_index]
    ids = tokenizer(init_text, add_special_tokens=False, truncation=False)["input_ids"][:count]
    table = bundle.text_encoders[encoder_index].get_input_embeddings().weight
    return table[torch.tensor(ids, dtype=torch.long, device=table.device)].detach().float().cpu()


def new_embedding(bundle: ModelBundle, name: str, init_text: str, num_vectors: int) -> Embedding:
    """A fresh embedding for `bundle`, initialised from `init_text` as A1111 does (step 0)."""
    validate_num_vectors(num_vectors)
    vectors = {}
    for index, (key, width) in enumerate(zip(encoder_keys(bundle), bundle.embedding_widths)):
        rows = init_token_embeddings(bundle, index, init_text, num_vectors) if init_text else None
        vectors[key] = init_vectors(rows, num_vectors, width)
    return Embedding(name=sanitize_name(name), vectors=vectors, step=0)


def existing_embedding_file(folder: Path, name: str) -> Path | None:
    """The file A1111 would load as embedding `name` from `folder` (top level), if any."""
    for suffix in EMBEDDING_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def embedding_file(folder: Path, name: str, file_format: str, is_sdxl: bool) -> Path:
    """Where embedding `name` is written: A1111 `.pt` holds one tensor, so an SDXL pair is `.safetensors`."""
    suffix = ".safetensors" if is_sdxl or file_format == "safetensors" else ".pt"
    return folder / f"{name}{suffix}"


def write_embedding(embedding: Embedding, path: Path) -> Path:
    if path.suffix == ".safetensors":
        return save_embedding_safetensors(embedding, path)
    return save_embedding_pt(embedding, path)


def load_for_model(path: Path, bundle: ModelBundle) -> Embedding:
    """An existing embedding, refused with a FormatError when it was made for another model family."""
    embedding = load_embedding(path)
    check_family(embedding, bundle.embedding_widths)
    return embedding


def refuse_existing(folder: Path, name: str) -> None:
    existing = existing_embedding_file(folder, name)
    if existing is not None:
        raise ConfigError(
            f"embedding {name!r} already exists ({existing}); tick Overwrite or choose another name"
        )


def create_embedding(
    host: Host,
    name: str,
    init_text: str,
    vectors: int,
    overwrite: bool = False,
    model: str = "",
    file_format: str = "pt",
) -> Path:
    """Create embedding `name` in the host's embeddings folder for `model` (the host's current one when
    empty), without training; the file is usable in prompts at once. Returns its path."""
    clean = sanitize_name(name)
    validate_num_vectors(vectors)
    if file_format not in ("pt", "safetensors"):
        raise ConfigError(f"file_format is {file_format!r}; expected 'pt' or 'safetensors'")
    folder = host.folders.embeddings
    if not overwrite:
        refuse_existing(folder, clean)
    checkpoint = host.resolve_checkpoint(model)
    with host.model_for_training(checkpoint.path) as bundle:
        embedding = new_embedding(bundle, clean, init_text, vectors)
        path = write_embedding(embedding, embedding_file(folder, clean, file_format, bundle.is_sdxl))
    host.refresh("embeddings")
    return path
