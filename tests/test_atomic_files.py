"""Atomic writes: the whole file or the old one, with the permissions of a normally created file."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from liandan.atomic_files import (
    STALE_AFTER_S,
    atomic_path,
    write_atomic,
    write_bytes_atomic,
    write_text_atomic,
)
from liandan.errors import DiskFullError


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


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "model [v2].safetensors", "old")

    def fill_the_disk(f) -> None:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    expected = (
        r"disk is full: .*model \[v2\]\.safetensors could not be written \(\d+ MiB free in .*\); "
        r"the previous file is unchanged\. Free some space and run the job again"
    )
    with pytest.raises(DiskFullError, match=expected):
        write_atomic(target, fill_the_disk)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_killed_writers_leftover_goes_at_the_next_write_once_stale(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "emb[1].pt", "v1")
    stale = tmp_path / ".emb[1].pt.0123456789ab.tmp"
    fresh = tmp_path / ".emb[1].pt.ba9876543210.tmp"  # may be another writer's, at work right now
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half")
    old = time.time() - STALE_AFTER_S - 1
    os.utime(stale, (old, old))
    write_text_atomic(target, "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, target.name]


WRITER = """
import sys, numpy as np
from liandan.atomic_files import write_bytes_atomic
target = sys.argv[1]
version = 0
while True:
    version += 1
    block = np.full(4 << 20, version % 251, dtype=np.uint8).tobytes()  # 4 MiB of one byte value
    write_bytes_atomic(target, block)
    print(version, flush=True)
"""


def test_a_writer_killed_at_random_moments_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    rng = random.Random(0)
    kills = 0
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=_env()
        )
        child.stdout.readline()  # one whole version is on disk
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
        data = target.read_bytes()
        assert len(data) == 4 << 20 and len(set(data)) == 1, "a partial or mixed file is visible"
        visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
        assert visible == ["out.bin"]
    assert kills == 6


def _env() -> dict[str, str]:
    repo = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
