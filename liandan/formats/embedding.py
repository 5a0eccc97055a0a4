"""Textual-inversion embeddings in every layout A1111 v1.10.1 reads, and the ones we write.

Read: A1111 `.pt`/`.bin` (`string_to_param`), `.safetensors` (one tensor such as kohya's `emb_params` or
`string_to_param.*`, or SDXL `clip_l` + `clip_g`), diffusers `learned_embeds` ({token: tensor}, 1-D
unsqueezed) and PNG/WebP cards. As in A1111 the name is the file stem, except for cards (their stored name).
Write: A1111 `.pt` (its exact dict), `.safetensors` (SD1/SD2 as `emb_params`, SDXL as `clip_l`/`clip_g`;
metadata strings for name/step/checkpoint, which A1111 ignores), diffusers `learned_embeds`, cards, and
A1111's `<file>.optim` optimizer sidecar guarded by its 4-hex checksum of the vectors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from liandan.errors import ConfigError, FormatError
from liandan.formats import embedding_card
from liandan.formats.a1111_pickle import load_pt, save_pt_a1111

SINGLE_KEY = "*"
SDXL_KEYS = ("clip_l", "clip_g")
MAX_VECTORS = 75  # one 75-token chunk, A1111's UI limit
A1111_TOKEN_ID = 265  # the placeholder id A1111 writes in string_to_token; never read back


@dataclass
class Embedding:
    """Vectors keyed by text encoder: {"*": [n, width]} for SD1/SD2, {"clip_l", "clip_g"} for SDXL."""

    name: str
    vectors: dict[str, torch.Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None  # A1111: the checkpoint's 10-hex short hash
    sd_checkpoint_name: str | None = None
    source: Path | None = None
    usage: str | None = None  # how to use it (an APT pair: which prompt each goes in); A1111 ignores it

    @property
    def is_sdxl(self) -> bool:
        return set(self.vectors) == set(SDXL_KEYS)

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> list[int]:
        """Per encoder, in the order of the bundle's `embedding_widths`."""
        keys = SDXL_KEYS if self.is_sdxl else (SINGLE_KEY,)
        return [self.vectors[k].shape[-1] for k in keys]

    @property
    def single(self) -> torch.Tensor:
        """The [n, width] tensor of an SD1/SD2 embedding."""
        if self.is_sdxl:
            raise FormatError(
                f"embedding {self.name!r} is an SDXL pair (clip_l, clip_g), not a single tensor"
            )
        return self.vectors[SINGLE_KEY]

    def checksum(self) -> str:
        """A1111's `Embedding.checksum`: 4 hex digits of a hash of int(vec * 100), guarding `.optim` files.

        A1111 computes it for single tensors only; an SDXL pair is hashed as clip_l then clip_g.
        """
        flat = torch.cat([self.vectors[k].detach().cpu().float().reshape(-1) for k in sorted(self.vectors)])
        r = 0
        for v in (flat * 100).to(torch.int64).tolist():  # float32 product, truncated toward zero like int()
            r = (r * 281 ^ v * 997) & 0xFFFFFFFF
        return f"{r & 0xFFFF:04x}"


def validate_num_vectors(count: int) -> int:
    if not isinstance(count, int) or not 1 <= count <= MAX_VECTORS:
        raise ConfigError(f"vectors per token must be a whole number from 1 to {MAX_VECTORS}, got {count!r}")
    return count


def init_vectors(init_token_embeddings: torch.Tensor | None, num_vectors: int, width: int) -> torch.Tensor:
    """A1111's initialisation: vec[i] = embedded[i * len // n] from the init text's token embeddings;
    all zeros without init text. Tokenizing (to at most n tokens, as A1111 does) is the caller's job."""
    validate_num_vectors(num_vectors)
    vec = torch.zeros(num_vectors, width)
    if init_token_embeddings is None or init_token_embeddings.shape[0] == 0:
        return vec
    if init_token_embeddings.ndim != 2 or init_token_embeddings.shape[1] != width:
        raise ConfigError(
            f"init token embeddings have shape {tuple(init_token_embeddings.shape)}, "
            f"expected (tokens, {width})"
        )
    count = init_token_embeddings.shape[0]
    for i in range(num_vectors):
        vec[i] = init_token_embeddings[i * count // num_vectors].detach().float()
    return vec


def check_family(embedding: Embedding, widths: Sequence[int]) -> None:
    """FormatError unless the embedding fits a model whose text encoders have these widths
    (ModelBundle.embedding_widths: [768] SD1, [1024] SD2, [768, 1280] SDXL)."""
    found = {key: tuple(t.shape) for key, t in embedding.vectors.items()}
    if embedding.widths != list(widths):
        expected = (
            {SINGLE_KEY: ("n", widths[0])}
            if len(widths) == 1
            else dict(zip(SDXL_KEYS, [("n", w) for w in widths]))
        )
        where = embedding.source or embedding.name
        raise FormatError(
            f"{where}: embedding shapes {found} do not fit this model, which expects {expected}; "
            f"it was made for another model family"
        )


def embedding_from_data(data: Any, name: str, source: Path | None = None) -> Embedding:
    """A1111's `create_embedding_from_data`: the three layouts it recognises."""
    where = source or name
    if not isinstance(data, Mapping) or not data:
        raise FormatError(
            f"{where}: not an embedding (expected a dict of tensors, got {type(data).__name__})"
        )
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # old files saved a ParameterDict
        if len(params) != 1:
            raise FormatError(f"{where}: the embedding file has {len(params)} terms in it; expected one")
        vectors = {SINGLE_KEY: _as_vectors(where, next(iter(params.values())))}
    elif all(k in data for k in SDXL_KEYS):
        vectors = {k: _as_vectors(where, data[k]) for k in SDXL_KEYS}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise FormatError(f"{where}: clip_l and clip_g hold different numbers of vectors")
    elif len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):
        vectors = {SINGLE_KEY: _as_vectors(where, next(iter(data.values())))}
    else:
        raise FormatError(
            f"{where}: neither a textual-inversion embedding (string_to_param), an SDXL pair "
            f"(clip_l, clip_g) nor a single-tensor concept; keys: {sorted(map(str, data))[:8]}"
        )
    return Embedding(
        name=name,
        vectors=vectors,
        step=_int_or_none(data.get("step")),
        sd_checkpoint=_str_or_none(data.get("sd_checkpoint")),
        sd_checkpoint_name=_str_or_none(data.get("sd_checkpoint_name")),
        source=source,
        usage=_str_or_none(data.get("usage")),
    )


def _as_vectors(where: object, tensor: Any) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise FormatError(f"{where}: expected a tensor, found {type(tensor).__name__}")
    tensor = tensor.detach().to("cpu", torch.float32)
    if tensor.ndim == 1:  # diffusers concepts store a single vector
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise FormatError(f"{where}: expected vectors of shape (n, width), found {tuple(tensor.shape)}")
    return tensor.contiguous()


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return int(value) if isinstance(value, int | float | str) and str(value).lstrip("-").isdigit() else None


def _str_or_none(value: Any) -> str | None:
    return str(value) if value is not None else None


def load_embedding(path: str | os.PathLike[str]) -> Embedding:
    """Read any embedding file A1111 reads (.pt, .bin, .safetensors, .png, .webp)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".bin"):
        return embedding_from_data(load_pt(path), path.stem, path)
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix in embedding_card.CARD_SUFFIXES:
        data = embedding_card.read_card(path)
        return embedding_from_data(data, str(data.get("name", path.stem)), path)
    raise FormatError(
        f"{path}: unknown embedding file type {suffix!r}; expected .pt, .bin, .safetensors, .png or .webp"
    )


def _load_safetensors(path: Path) -> Embedding:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise FormatError(f"{path}: not a readable safetensors file ({error})") from error
    if len(tensors) == 1 and next(iter(tensors)).startswith("string_to_param"):
        tensors = {"string_to_param": {SINGLE_KEY: next(iter(tensors.values()))}}  # type: ignore[dict-item]
    embedding = embedding_from_data(tensors, path.stem, path)
    embedding.step = _int_or_none(metadata.get("step"))
    embedding.sd_checkpoint = metadata.get("sd_checkpoint")
    embedding.sd_checkpoint_name = metadata.get("sd_checkpoint_name")
    embedding.usage = metadata.get("usage")
    return embedding


def to_a1111_dict(embedding: Embedding) -> dict[str, Any]:
    """Exactly what A1111's `Embedding.save` pickles (SD1/SD2 only: A1111 .pt holds one tensor), plus a
    "usage" string when the embedding has one (A1111 reads only the keys it knows)."""
    usage = {} if embedding.usage is None else {"usage": embedding.usage}
    return {
        "string_to_token": {SINGLE_KEY: A1111_TOKEN_ID},
        "string_to_param": {SINGLE_KEY: embedding.single.detach().to("cpu", torch.float32).contiguous()},
        "name": embedding.name,
        "step": embedding.step,
        "sd_checkpoint": embedding.sd_checkpoint,
        "sd_checkpoint_name": embedding.sd_checkpoint_name,
        **usage,
    }


def save_embedding_pt(embedding: Embedding, path: str | os.PathLike[str]) -> Path:
    """A1111 `.pt` (passes its safe unpickler). SDXL pairs go to `.safetensors` instead."""
    return save_pt_a1111(to_a1111_dict(embedding), path)


def save_embedding_safetensors(embedding: Embedding, path: str | os.PathLike[str]) -> Path:
    """`emb_params` for SD1/SD2 (A1111 loads any single-tensor file), `clip_l`/`clip_g` for SDXL."""
    from safetensors.torch import save

    from liandan.atomic_files import write_bytes_atomic

    keys = SDXL_KEYS if embedding.is_sdxl else (SINGLE_KEY,)
    tensors = {
        ("emb_params" if k == SINGLE_KEY else k): embedding.vectors[k]
        .detach()
        .to("cpu", torch.float32)
        .contiguous()
        for k in keys
    }
    metadata = {
        "name": embedding.name,
        "step": embedding.step,
        "sd_checkpoint": embedding.sd_checkpoint,
        "sd_checkpoint_name": embedding.sd_checkpoint_name,
        "usage": embedding.usage,
    }
    text = {k: str(v) for k, v in metadata.items() if v is not None}
    return write_bytes_atomic(path, save(tensors, metadata=text))


def save_embedding_diffusers(embedding: Embedding, path: str | os.PathLike[str], token: str) -> Path:
    """diffusers `learned_embeds` ({token: [n, width]}): `.bin` (torch) or `.safetensors` by suffix."""
    from safetensors.torch import save

    from liandan.atomic_files import write_bytes_atomic

    tensors = {token: embedding.single.detach().to("cpu", torch.float32).contiguous()}
    if Path(path).suffix.lower() == ".safetensors":
        return write_bytes_atomic(path, save(tensors))
    return save_pt_a1111(tensors, path)


def save_embedding_card(
    embedding: Embedding,
    image: Any,
    path: str | os.PathLike[str],
    model_name: str,
    short_hash: str,
    font_path: str | None = None,
) -> Path:
    """A1111's training card: `<name>` title, footers `model_name`, `[short_hash]`, `Nv Ss`."""
    footers = (model_name, f"[{short_hash}]", f"{embedding.num_vectors}v {embedding.step or 0}s")
    return embedding_card.write_card(path, image, to_a1111_dict(embedding), footers, font_path)


def optimizer_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}.optim")


def save_embedding_optimizer(
    path: str | os.PathLike[str], embedding: Embedding, optimizer_state: Mapping[str, Any]
) -> Path:
    """A1111's `<file>.optim`: {'hash': embedding.checksum(), 'optimizer_state_dict': ...}."""
    return save_pt_a1111(
        {"hash": embedding.checksum(), "optimizer_state_dict": optimizer_state}, optimizer_path(path)
    )


def load_embedding_optimizer(path: str | os.PathLike[str], embedding: Embedding) -> dict[str, Any] | None:
    """The optimizer state to resume with, or None if there is none or it belongs to other vectors."""
    sidecar = optimizer_path(path)
    if not sidecar.is_file():
        return None
    saved = load_pt(sidecar)
    if not isinstance(saved, Mapping) or saved.get("hash") != embedding.checksum():
        return None
    return saved.get("optimizer_state_dict")
