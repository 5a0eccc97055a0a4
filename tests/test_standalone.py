from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from liandan.errors import CheckpointError
from liandan.host.base import Host
from liandan.host.standalone import BUNDLE_CACHE, StandaloneHost, default_data_dir
from liandan.models import loading, tiny
from liandan.models.tiny import write_tiny_models


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The real tiny SD1 and SDXL checkpoints, written once for this module (each test copies them)."""
    return write_tiny_models(tmp_path_factory.mktemp("tiny") / "models" / "Stable-diffusion")


@pytest.fixture
def calls(monkeypatch) -> Iterator[dict[str, list[Path]]]:
    """The real write_tiny_models / load_bundle, counted."""
    seen: dict[str, list[Path]] = {"write": [], "load": []}

    def counted(key: str, real: Callable[[Path], Any]) -> Callable[[Path], Any]:
        def call(path: Path) -> Any:
            seen[key].append(path)
            return real(path)

        return call

    monkeypatch.setattr(tiny, "write_tiny_models", counted("write", tiny.write_tiny_models))
    monkeypatch.setattr(loading, "load_bundle", counted("load", loading.load_bundle))
    BUNDLE_CACHE.clear()
    yield seen
    BUNDLE_CACHE.clear()


def _host_with(tmp_path: Path, tiny_models: dict[str, Path]) -> StandaloneHost:
    """A data dir holding the tiny models with their .yaml files and CLIP folder, as write_tiny_models lays
    them out under models/."""
    shutil.copytree(tiny_models["sd1"].parents[1], tmp_path / "models")
    return StandaloneHost(tmp_path)


def test_folders_mirror_a1111_layout(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path)
    assert isinstance(host, Host)
    f = host.folders
    assert f.checkpoints == tmp_path / "models" / "Stable-diffusion"
    assert f.embeddings == tmp_path / "embeddings"
    assert f.hypernetworks == tmp_path / "models" / "hypernetworks"
    assert f.lora == tmp_path / "models" / "Lora"
    assert f.aesthetic_embeddings == tmp_path / "models" / "aesthetic_embeddings"
    assert f.logs == tmp_path / "textual_inversion"
    assert all(p.is_dir() for p in (*f.all(), f.templates))


def test_default_data_dir_honours_env(monkeypatch) -> None:
    monkeypatch.setenv("LIANDAN_DATA_DIR", "/some/where")
    assert default_data_dir() == Path("/some/where")
    monkeypatch.delenv("LIANDAN_DATA_DIR")
    assert default_data_dir() == Path("liandan-data")


def test_empty_data_dir_gets_the_tiny_default_once(tmp_path: Path, calls) -> None:
    host = StandaloneHost(tmp_path)
    current = host.current_checkpoint()
    assert current is not None and current.title == "liandan-tiny-sd1.safetensors"
    assert host.current_checkpoint() == current
    assert calls["write"] == [host.folders.checkpoints]


def test_existing_checkpoints_are_listed_recursively_without_vae_files(tmp_path: Path, calls) -> None:
    host = StandaloneHost(tmp_path)
    ckpts = host.folders.checkpoints
    (ckpts / "sub").mkdir()
    (ckpts / "sub" / "b.ckpt").write_bytes(b"x")
    (ckpts / "a.safetensors").write_bytes(b"x")
    (ckpts / "a.vae.safetensors").write_bytes(b"x")
    (ckpts / "notes.txt").write_text("x")
    (ckpts / "diffusers-model").mkdir()
    (ckpts / "diffusers-model" / "model_index.json").write_text("{}")
    assert [r.title for r in host.list_checkpoints()] == ["a.safetensors", "diffusers-model", "sub/b.ckpt"]
    assert host.current_checkpoint().title == "a.safetensors"
    assert calls["write"] == []


def test_configured_checkpoint_wins_and_must_exist(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(b"x")
    assert StandaloneHost(tmp_path / "d", checkpoint=elsewhere).current_checkpoint().path == elsewhere
    with pytest.raises(CheckpointError, match=r"missing\.safetensors does not exist"):
        StandaloneHost(tmp_path / "d", checkpoint=tmp_path / "missing.safetensors").current_checkpoint()


def test_resolve_checkpoint_by_name_or_path(tmp_path: Path, tiny_models) -> None:
    host = _host_with(tmp_path, tiny_models)
    assert host.resolve_checkpoint("liandan-tiny-sdxl").title == "liandan-tiny-sdxl.safetensors"
    assert host.resolve_checkpoint("").title == "liandan-tiny-sd1.safetensors"
    assert host.resolve_checkpoint(tiny_models["sdxl"]).path == tiny_models["sdxl"]  # a path elsewhere
    with pytest.raises(CheckpointError, match=r"'nope' is neither a file nor a model in .*Stable-diffusion"):
        host.resolve_checkpoint("nope")


def test_model_for_training_loads_once_and_hands_out_independent_copies(
    tmp_path: Path, tiny_models, calls
) -> None:
    host = _host_with(tmp_path, tiny_models)
    with host.model_for_training() as bundle:
        pristine = bundle.unet.conv_in.weight.detach().clone()
        vocabulary = len(bundle.tokenizers[0])
        bundle.tokenizers[0].add_tokens(["<my-token>"])  # what a method does to what it got (TI)
        with torch.no_grad():
            bundle.unet.conv_in.weight.add_(1.0)
    with host.model_for_training() as bundle:
        assert len(bundle.tokenizers[0]) == vocabulary, "the next job must get the pristine model"
        assert torch.equal(bundle.unet.conv_in.weight, pristine)
        assert bundle.family == "sd1" and bundle.source == host.folders.checkpoints / tiny_models["sd1"].name
    assert len(calls["load"]) == 1
    with host.model_for_training(Path("liandan-tiny-sdxl.safetensors")) as bundle:
        assert bundle.family == "sdxl"
    assert [p.name for p in calls["load"]] == [tiny_models["sd1"].name, tiny_models["sdxl"].name]


def test_refresh_changes_nothing(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert host.refresh("embeddings") is None
    assert sorted(tmp_path.rglob("*")) == before


def test_real_tiny_default_loads(tmp_path: Path) -> None:
    BUNDLE_CACHE.clear()
    host = StandaloneHost(tmp_path)
    with host.model_for_training() as bundle:
        assert bundle.family == "sd1"
        assert bundle.source is not None and bundle.source.parent == host.folders.checkpoints
    BUNDLE_CACHE.clear()


def test_a_checkpoint_fine_tuned_here_does_not_become_the_next_jobs_base(tmp_path: Path) -> None:
    """ "db" sorts before "liandan-tiny-sd1", but a DreamBooth result is never the default model."""
    from safetensors.torch import save_file

    host = StandaloneHost(tmp_path / "d")
    base = host.current_checkpoint()  # the tiny default, written on first use
    save_file({"x": torch.zeros(1)}, str(host.folders.checkpoints / "db.safetensors"),
              metadata={"liandan.trained": "unet"})  # fmt: skip
    assert host.list_checkpoints()[0].title == "db.safetensors"
    assert host.current_checkpoint() == base
