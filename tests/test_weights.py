from __future__ import annotations

import pytest

from liandan.errors import CheckpointError
from liandan.preprocess.weights import DEEPBOORU, WeightFile, ensure_weights, find_weights, hub_file


def test_found_in_a1111_folders_in_order(tmp_path) -> None:
    assert find_weights(DEEPBOORU, tmp_path) is None
    newer = tmp_path / "DeepDanbooru" / DEEPBOORU.name
    newer.parent.mkdir()
    newer.write_bytes(b"x")
    assert ensure_weights([DEEPBOORU], tmp_path) == [newer]
    older = tmp_path / "torch_deepdanbooru" / DEEPBOORU.name
    older.parent.mkdir()
    older.write_bytes(b"y")
    assert find_weights(DEEPBOORU, tmp_path) == older


def test_download_on_first_use_goes_to_the_first_folder(tmp_path) -> None:
    remote = tmp_path / "remote.bin"
    remote.write_bytes(b"weights" * 1000)
    weight = WeightFile("w.bin", ("torch_deepdanbooru",), remote.as_uri())
    [path] = ensure_weights([weight], tmp_path / "models")
    assert path == tmp_path / "models" / "torch_deepdanbooru" / "w.bin"
    assert path.read_bytes() == remote.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["w.bin"]  # no temporary left


def test_offline_every_missing_file_is_listed_in_one_message(tmp_path, monkeypatch) -> None:
    present = WeightFile("have.bin", ("a",), "https://example.invalid/have.bin")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "have.bin").write_bytes(b"x")
    blip = [hub_file("Salesforce/blip", name, "BLIP") for name in ("config.json", "model.safetensors")]
    monkeypatch.setenv("LIANDAN_OFFLINE", "1")
    with pytest.raises(CheckpointError) as caught:
        ensure_weights([present, *blip, DEEPBOORU], tmp_path)
    message = str(caught.value)
    assert message.startswith("3 weight files are missing (downloads are off)")
    for weight in [*blip, DEEPBOORU]:
        assert f"{tmp_path / weight.folders[0] / weight.name}  from {weight.url}" in message
    assert "have.bin" not in message
    assert not (tmp_path / "torch_deepdanbooru").exists()


def test_failed_download_lists_what_is_still_missing(tmp_path) -> None:
    remote = tmp_path / "remote.bin"
    remote.write_bytes(b"w")
    fetched = WeightFile("first.bin", ("m",), remote.as_uri())
    broken = WeightFile("second.bin", ("m",), (tmp_path / "nowhere.bin").as_uri())
    later = WeightFile("third.bin", ("n",), remote.as_uri())
    with pytest.raises(CheckpointError, match="download failed") as caught:
        ensure_weights([fetched, broken, later], tmp_path / "models")
    message = str(caught.value)
    assert "2 weight files are missing" in message
    assert str(tmp_path / "models" / "m" / "second.bin") in message
    assert str(tmp_path / "models" / "n" / "third.bin") in message
    assert "first.bin" not in message and (tmp_path / "models" / "m" / "first.bin").is_file()


def test_hub_file_layout() -> None:
    weight = hub_file("SmilingWolf/wd-vit-tagger-v3", "model.onnx", "wd14_tagger")
    assert weight.folders == ("wd14_tagger/wd-vit-tagger-v3",)
    assert weight.url == "https://huggingface.co/SmilingWolf/wd-vit-tagger-v3/resolve/main/model.onnx"
