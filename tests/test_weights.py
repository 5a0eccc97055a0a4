from __future__ import annotations

import pytest

from liandan.errors import CheckpointError
from liandan.preprocess.weights import DEEPBOORU, WeightFile, ensure_weights, find_weights, hub_file


def test_found_in_a1111_folders_in_order(tmp_path) -> None:
    assert find_weights(DEEPBOORU, tmp_path) is None
    newer = tmp_path / "DeepDanbooru" / DEEPBOORU.name
    newer.parent.mkdir()
    newer.write_bytes(b"x")
    assert ensure_weights(DEEPBOORU, tmp_path) == newer
    older = tmp_path / "torch_deepdanbooru" / DEEPBOORU.name
    older.parent.mkdir()
    older.write_bytes(b"y")
    assert find_weights(DEEPBOORU, tmp_path) == older


def test_download_on_first_use_goes_to_the_first_folder(tmp_path) -> None:
    remote = tmp_path / "remote.bin"
    remote.write_bytes(b"weights" * 1000)
    weight = WeightFile("w.bin", ("torch_deepdanbooru",), remote.as_uri())
    path = ensure_weights(weight, tmp_path / "models")
    assert path == tmp_path / "models" / "torch_deepdanbooru" / "w.bin"
    assert path.read_bytes() == remote.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["w.bin"]  # no temporary left


def test_offline_or_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    weight = WeightFile("w.bin", ("torch_deepdanbooru",), (tmp_path / "nowhere.bin").as_uri())
    with pytest.raises(CheckpointError, match="download failed") as e:
        ensure_weights(weight, tmp_path)
    assert str(tmp_path / "torch_deepdanbooru") in str(e.value) and "w.bin" in str(e.value)
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    with pytest.raises(
        CheckpointError, match=r"model-resnet_custom_v3\.pt was not found \(downloads are off\)"
    ):
        ensure_weights(DEEPBOORU, tmp_path)
    assert not (tmp_path / "torch_deepdanbooru" / DEEPBOORU.name).exists()


def test_hub_file_layout() -> None:
    weight = hub_file("SmilingWolf/wd-vit-tagger-v3", "model.onnx", "wd14_tagger")
    assert weight.folders == ("wd14_tagger/wd-vit-tagger-v3",)
    assert weight.url == "https://huggingface.co/SmilingWolf/wd-vit-tagger-v3/resolve/main/model.onnx"
