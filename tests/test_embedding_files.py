from __future__ import annotations

from pathlib import Path

from liandan.formats.embedding_files import embedding_file, existing_embedding_file


def test_the_file_a1111_loads_for_a_name_and_the_one_we_write(tmp_path: Path) -> None:
    assert existing_embedding_file(tmp_path, "cat") is None
    (tmp_path / "cat.png").write_bytes(b"")
    (tmp_path / "cat.pt.optim").write_bytes(b"")  # a sidecar is not an embedding
    assert existing_embedding_file(tmp_path, "cat") == tmp_path / "cat.png"
    assert embedding_file(tmp_path, "cat", "pt", is_sdxl=False) == tmp_path / "cat.pt"
    assert embedding_file(tmp_path, "cat", "pt", is_sdxl=True) == tmp_path / "cat.safetensors"  # a pair
