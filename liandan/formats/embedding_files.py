"""Where an embedding lives in A1111's embeddings folder: the file A1111 loads for a name, and the file we
write. A1111 loads every file of the folder by its stem, so two files of one name mean one of them at random;
`write_embedding` writes the formats A1111 reads back (`.pt`, `.safetensors`)."""

from __future__ import annotations

from pathlib import Path

from liandan.errors import ConfigError
from liandan.formats.embedding import Embedding, save_embedding_pt, save_embedding_safetensors

# the suffixes A1111 lists as embeddings, in the order we look for an existing one
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin", ".png", ".webp")
WRITTEN_SUFFIXES = (".pt", ".safetensors")


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


def refuse_existing(folder: Path, name: str) -> None:
    existing = existing_embedding_file(folder, name)
    if existing is not None:
        raise ConfigError(
            f"embedding {name!r} already exists ({existing}); tick Overwrite or choose another name"
        )
