"""Atomic writes: the whole file or the old one, with the permissions of a normally created file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from liandan.atomic_files import atomic_path, write_bytes_atomic, write_text_atomic


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_has_the_mode_of_a_normal_new_file(tmp_path: Path, umask_022: None) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text_atomic(tmp_path / "sub" / "ours.txt", "hello")
    assert written.read_text() == "hello"
    assert (written.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == 0o644


def test_umask_is_respected(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        written = write_bytes_atomic(tmp_path / "private.bin", b"1")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == 0o600


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
