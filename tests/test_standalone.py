from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from liandan.errors import CheckpointError
from liandan.host.base import Host
from liandan.host.standalone import BUNDLE_CACHE, StandaloneHost, default_data_dir


@pytest.fixture
def fake_models(monkeypatch):
    """Stand-ins for liandan.models.tiny / .loading that record calls (the real ones have their own tests)."""
    calls: dict[str, list[Path]] = {"write": [], "load": []}

    def write_tiny_models(folder: Path) -> None:
        calls["write"].append(folder)
        (folder / "tiny-sd1.safetensors").write_bytes(b"sd1")
        (folder / "tiny-sdxl.safetensors").write_bytes(b"sdxl")

    def load_bundle(path: Path) -> dict:
        calls["load"].append(path)
        return {"source": path, "tokens": []}

    monkeypatch.setitem(
        sys.modules, "liandan.models.tiny", types.SimpleNamespace(write_tiny_models=write_tiny_models)
    )
    monkeypatch.setitem(sys.modules, "liandan.models.loading", types.SimpleNamespace(load_bundle=load_bundle))
    BUNDLE_CACHE.clear()
    yield calls
    BUNDLE_CACHE.clear()


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


def test_empty_data_dir_gets_the_tiny_default_once(tmp_path: Path, fake_models) -> None:
    host = StandaloneHost(tmp_path)
    current = host.current_checkpoint()
    assert current is not None and current.title == "tiny-sd1.safetensors"
    assert host.current_checkpoint() == current
    assert fake_models["write"] == [host.folders.checkpoints]


def test_existing_checkpoints_are_listed_recursively_without_vae_files(tmp_path: Path, fake_models) -> None:
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
    assert fake_models["write"] == []


def test_configured_checkpoint_wins_and_must_exist(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(b"x")
    assert StandaloneHost(tmp_path / "d", checkpoint=elsewhere).current_checkpoint().path == elsewhere
    with pytest.raises(CheckpointError, match=r"missing\.safetensors does not exist"):
        StandaloneHost(tmp_path / "d", checkpoint=tmp_path / "missing.safetensors").current_checkpoint()


def test_resolve_checkpoint_by_name_or_path(tmp_path: Path, fake_models) -> None:
    host = StandaloneHost(tmp_path)
    host.current_checkpoint()
    assert host.resolve_checkpoint("tiny-sdxl").title == "tiny-sdxl.safetensors"
    assert host.resolve_checkpoint("").title == "tiny-sd1.safetensors"
    with pytest.raises(CheckpointError, match=r"'nope' is neither a file nor a model in .*Stable-diffusion"):
        host.resolve_checkpoint("nope")


def test_model_for_training_loads_once_and_hands_out_independent_copies(tmp_path: Path, fake_models) -> None:
    host = StandaloneHost(tmp_path)
    with host.model_for_training() as bundle:
        bundle["tokens"].append("<my-token>")  # a method changing what it got (TI adds tokens)
    with host.model_for_training() as bundle:
        assert bundle["tokens"] == [], "the next job must get the pristine model"
    assert len(fake_models["load"]) == 1
    with host.model_for_training(Path("tiny-sdxl.safetensors")):
        pass
    assert [p.name for p in fake_models["load"]] == ["tiny-sd1.safetensors", "tiny-sdxl.safetensors"]


def test_refresh_is_a_no_op(tmp_path: Path) -> None:
    StandaloneHost(tmp_path).refresh("embeddings")


def test_real_tiny_default_loads(tmp_path: Path) -> None:
    pytest.importorskip("liandan.models.tiny", reason="liandan.models.tiny not written yet")
    pytest.importorskip("liandan.models.loading", reason="liandan.models.loading not written yet")
    BUNDLE_CACHE.clear()
    host = StandaloneHost(tmp_path)
    with host.model_for_training() as bundle:
        assert bundle.family in ("sd1", "sd2", "sdxl")
        assert bundle.source is not None and bundle.source.parent == host.folders.checkpoints
    BUNDLE_CACHE.clear()
