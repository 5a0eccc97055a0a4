"""Fuzzed readers: every file reader (embeddings, hypernetworks, LoRAs, aesthetic embeddings, checkpoint
headers and family detection, job files, captions), given a valid file with bytes cut, overwritten or
inserted, either reads it or raises our own clear error (a `LiandanError`); any other exception is a bug.

Each reader starts from a real file our writers made (the formats A1111 writes), so the mutations reach
deep into the format (zip directory, pickle stream, safetensors header, PNG chunks, TOML) instead of being
turned away at the first byte. The budget is bounded (`max_examples`) so CI runs it on every push.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from liandan.data.captions import read_caption
from liandan.errors import LiandanError
from liandan.formats.aesthetic import AestheticEmbedding, load_aesthetic, save_aesthetic
from liandan.formats.embedding import (
    Embedding,
    load_embedding,
    save_embedding_card,
    save_embedding_diffusers,
    save_embedding_pt,
    save_embedding_safetensors,
)
from liandan.formats.hypernetwork import load_hypernetwork, save_hypernetwork
from liandan.formats.identify import identify
from liandan.formats.lora import LoraFile, read_lora, write_lora
from liandan.jobs import load_job_file
from liandan.models.hypernetwork_modules import Hypernetwork

EXAMPLES = int(os.environ.get("LIANDAN_FUZZ_EXAMPLES", "120"))  # CI: the bounded budget
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with one to three edits: a cut, an overwrite with random bytes, an insertion."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["truncate", "overwrite", "insert", "flip"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if edit == "truncate":
            del data[at:]
        elif edit == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def _embedding() -> Embedding:
    torch.manual_seed(0)
    return Embedding(name="fuzz", vectors={"*": torch.randn(2, 32)}, step=3)


def _hypernetwork_file(folder: Path) -> Path:
    hypernetwork = Hypernetwork(name="fuzz", sizes=(32,), layer_structure=(1.0, 2.0, 1.0))
    return save_hypernetwork(hypernetwork, folder / "fuzz-hypernetwork.pt")


def _aesthetic() -> AestheticEmbedding:
    torch.manual_seed(0)
    feature = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1)
    return AestheticEmbedding({"": feature}, family="sd1", clip_model="tiny", image_count=4)


def _lora_file(folder: Path) -> Path:
    torch.manual_seed(0)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {
        f"{name}.lora_down.weight": torch.randn(4, 32),
        f"{name}.lora_up.weight": torch.randn(32, 4),
        f"{name}.alpha": torch.tensor(4.0),
    }
    return write_lora(folder / "fuzz-lora.safetensors", LoraFile(tensors, {"ss_base_model_version": "sd_v1"}))


def _checkpoint_file(folder: Path, suffix: str) -> Path:
    """A checkpoint's header and key layout (a few SD1 LDM keys, small tensors): what detection reads."""
    keys = {
        "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "model.diffusion_model.out.2.weight": (4, 8, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (16, 32),
        "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
    }
    tensors = {key: torch.zeros(shape) for key, shape in keys.items()}
    path = folder / f"fuzz-model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save({"state_dict": tensors}, path)
    return path


def _read_checkpoint(path: Path) -> None:
    from liandan.models.detect import detect_family
    from liandan.models.loading import open_checkpoint

    with open_checkpoint(path) as source:
        detect_family(path, source.shapes)


SEEDS: dict[str, Callable[[Path], Path]] = {
    "embedding.pt": lambda d: save_embedding_pt(_embedding(), d / "fuzz.pt"),
    "embedding.safetensors": lambda d: save_embedding_safetensors(_embedding(), d / "fuzz.safetensors"),
    "embedding.bin": lambda d: save_embedding_diffusers(_embedding(), d / "fuzz.bin", "<fuzz>"),
    "embedding.png": lambda d: save_embedding_card(
        _embedding(), Image.new("RGB", (64, 64), "teal"), d / "fuzz.png", "tiny", "0123456789"
    ),
    "hypernetwork.pt": _hypernetwork_file,
    "aesthetic.pt": lambda d: save_aesthetic(_aesthetic(), d / "fuzz-aesthetic.pt"),
    "aesthetic.safetensors": lambda d: save_aesthetic(_aesthetic(), d / "fuzz-aesthetic.safetensors"),
    "lora.safetensors": _lora_file,
    "checkpoint.safetensors": lambda d: _checkpoint_file(d, ".safetensors"),
    "checkpoint.ckpt": lambda d: _checkpoint_file(d, ".ckpt"),
}
READERS: dict[str, Callable[[Path], Any]] = {
    "embedding.pt": load_embedding,
    "embedding.safetensors": load_embedding,
    "embedding.bin": load_embedding,
    "embedding.png": load_embedding,
    "hypernetwork.pt": load_hypernetwork,
    "aesthetic.pt": load_aesthetic,
    "aesthetic.safetensors": load_aesthetic,
    "lora.safetensors": lambda p: (read_lora(p).family, read_lora(p).network_type()),
    "checkpoint.safetensors": _read_checkpoint,
    "checkpoint.ckpt": _read_checkpoint,
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("seeds")
    return {name: make(folder) for name, make in SEEDS.items()}


def _reads_or_refuses(read: Callable[[Path], Any], path: Path) -> None:
    try:
        read(path)
    except LiandanError as e:
        assert str(e), "an error for the user must say something"


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_the_seed_file_reads(seeds: dict[str, Path], kind: str) -> None:
    READERS[kind](seeds[kind])  # the mutations start from a file that is valid
    identify(seeds[kind])


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_a_damaged_file_reads_or_gets_a_clear_error(
    seeds: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    original = seeds[kind].read_bytes()
    target = tmp_path / seeds[kind].name

    @FUZZ
    @given(data=mutated(original))
    def check(data: bytes) -> None:
        target.write_bytes(data)
        _reads_or_refuses(READERS[kind], target)
        _reads_or_refuses(identify, target)

    check()


JOB_TOML = """kind = "textual_inversion"
name = "fuzz"
vectors = 2
[train]
learn_rate = "0.005:100, 0.001"
max_steps = 10
[data]
folder = "images"
width = 64
height = 64
[[extra_data]]
folder = "more"
weight = 0.5
"""


@FUZZ
@given(data=mutated(JOB_TOML.encode()))
def test_a_damaged_job_file_loads_or_gets_a_clear_error(data: bytes, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("job")
    for suffix in (".toml", ".json"):
        path = folder / f"job{suffix}"
        path.write_bytes(data)
        _reads_or_refuses(load_job_file, path)
    shutil.rmtree(folder)


@FUZZ
@given(data=st.binary(max_size=64))
def test_any_caption_bytes_read_or_get_a_clear_error(data: bytes, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("caption")
    image = folder / "a.png"
    image.with_suffix(".txt").write_bytes(data)
    _reads_or_refuses(lambda path: read_caption(path, None, " "), image)
    shutil.rmtree(folder)
