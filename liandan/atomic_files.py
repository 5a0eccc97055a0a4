"""Every output is written atomically: to a temporary file beside the target, then renamed over it.

A crash or an interrupt leaves either the old file or the new one, never half of one. A process killed
mid-write leaves its hidden temporary (`.name.<random>.tmp`, which no WebUI list shows); the next write of
the same file removes such leftovers once they are old enough not to belong to a writer still at work.
A full disk is a `DiskFullError` that names the file and the free space, with the old file intact.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from liandan.errors import DiskFullError

STALE_AFTER_S = 15 * 60  # a temporary untouched this long belongs to no live writer (writing updates mtime)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _create_temporary(target: Path) -> Path:
    """An empty new file beside `target`, created with mode 0666 so the umask applies as to any new file
    (tempfile.mkstemp makes it 0600, and the rename would leave every artifact owner-only)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `target` in one rename."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temporary(target)
        try:
            yield tmp
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        if error.errno in _NO_SPACE:
            raise DiskFullError(_disk_full_message(target)) from error
        raise
    _remove_stale_temporaries(target)


def _disk_full_message(target: Path) -> str:
    folder = next((p for p in target.parents if p.exists()), Path())
    free = shutil.disk_usage(folder).free
    kept = "the previous file is unchanged" if target.exists() else "no partial file was left"
    return (
        f"the disk is full: {target} could not be written ({free / 2**20:.0f} MiB free in {folder}); "
        f"{kept}. Free some space and run the job again: it resumes from its last saved state."
    )


def _remove_stale_temporaries(target: Path) -> None:
    """Leftovers of writers killed while writing `target` (see the module docstring)."""
    now = time.time()
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > STALE_AFTER_S:
                leftover.unlink()


def write_atomic(target: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call `write(f)` on a binary file object; the result lands at `target` atomically."""
    with atomic_path(target) as tmp, tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return Path(target)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> Path:
    return write_atomic(target, lambda f: f.write(data))


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))
