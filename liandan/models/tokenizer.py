"""The CLIP tokenizer, built offline from the BPE file open_clip_torch ships.

openai/clip-vit-large-patch14 (SD1, SDXL's first encoder) and OpenCLIP (SD2, SDXL's second) share one
vocabulary; they differ only in the pad token: "<|endoftext|>" for CLIP-L, "!" (id 0) for OpenCLIP, as
open_clip pads with zeros and A1111's OpenCLIP hijack sets `id_pad = 0`.
"""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.errors import CheckpointError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CLIP_L_PAD = "<|endoftext|>"
OPEN_CLIP_PAD = "!"
BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# open_clip keeps the first 49152 - 256 - 2 merges of the file (the rest are unused)
_MERGE_COUNT = 49152 - 256 - 2


def bpe_file() -> Path:
    """Path of open_clip's BPE file, found without importing open_clip (its import pulls in timm)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"open_clip_torch is not installed: it provides {BPE_FILE_NAME}")
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the open_clip_torch install")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in CLIP's order of its first 256 tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@functools.lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[str, str]:
    """(vocab.json text, merges.txt text) of the CLIP tokenizer, in transformers' file formats."""
    lines = gzip.decompress(bpe_file().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = [*byte_tokens, *(t + "</w>" for t in byte_tokens), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    return json.dumps(vocab, ensure_ascii=False), merges_text


def write_tokenizer_files(dest: Path, pad_token: str = CLIP_L_PAD) -> Path:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt and the two token config files)."""
    vocab, merges = vocab_and_merges()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(vocab, encoding="utf-8")
    (dest / "merges.txt").write_text(merges, encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    special["pad_token"] = pad_token
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return dest


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    # from_pretrained on a folder reads the files the same way in transformers 4 and 5 (whose CLIPTokenizer
    # constructor no longer takes file paths)
    with tempfile.TemporaryDirectory(prefix="liandan-tokenizer-") as tmp:
        return CLIPTokenizer.from_pretrained(str(write_tokenizer_files(Path(tmp), pad_token)))


def clip_tokenizer(pad_token: str = CLIP_L_PAD) -> CLIPTokenizer:
    """A fresh CLIP tokenizer (a copy: callers such as textual inversion add tokens to it)."""
    return copy.deepcopy(_cached_tokenizer(pad_token))
