"""Writing `.pt` files that a stock A1111 (safe-unpickle on) accepts, and reading `.pt` files safely.

A1111 v1.10.1 `modules/safe.py` checks every zip entry name against `data.pkl`, `version`, `byteorder`,
`.data/serialization_id` and `data/N`, and unpickles `data.pkl` with an allowlist of globals. Recent torch
also writes `.format_version` and `.storage_alignment`, which that check rejects, so we let torch serialize
into memory and rewrite the zip without them (data records stay 64-byte aligned, as torch lays them out).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from liandan.atomic_files import write_bytes_atomic
from liandan.errors import FormatError

# The globals A1111's RestrictedUnpickler lets through (v1.10.1), minus the pytorch_lightning and numpy ones
# a tensor file of ours never needs.
A1111_ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("torch", "FloatStorage"),
        ("torch", "HalfStorage"),
        ("torch", "IntStorage"),
        ("torch", "LongStorage"),
        ("torch", "DoubleStorage"),
        ("torch", "ByteStorage"),
        ("torch", "BFloat16Storage"),
        ("torch", "float32"),
        ("torch.nn.modules.container", "ParameterDict"),
        ("__builtin__", "set"),
    }
)
# Zip entries A1111 refuses although torch writes them (torch >= 2.5 or so).
_DROPPED_ENTRIES = (".format_version", ".storage_alignment")
_ALIGNMENT = 64
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # a fixed timestamp keeps the bytes reproducible


def pickle_globals(data_pkl: bytes) -> set[tuple[str, str]]:
    """The (module, name) globals a pickle refers to, found without unpickling it."""
    found: set[tuple[str, str]] = set()
    for opcode, arg, _pos in pickletools.genops(data_pkl):
        if opcode.name in ("GLOBAL", "INST"):
            module, name = str(arg).split(" ", 1)
            found.add((module, name))
        elif opcode.name == "STACK_GLOBAL":
            # Its operands are on the stack; torch pickles with protocol 2, which never emits it.
            found.add(("<stack>", "STACK_GLOBAL"))
    return found


def _torch_zip(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _aligned_entry(name: str, offset: int) -> zipfile.ZipInfo:
    """A stored zip entry whose data starts on a 64-byte boundary, padded like torch pads (extra id 'FB')."""
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode("utf-8"))
    pad = (-(offset + header + 4)) % _ALIGNMENT
    info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
    return info


def a1111_zip_bytes(obj: Any, archive_name: str) -> bytes:
    """Serialize `obj` with torch, then rebuild the zip with only the entries A1111 accepts."""
    source = zipfile.ZipFile(io.BytesIO(_torch_zip(obj)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            _, _, inner = info.filename.partition("/")
            if inner in _DROPPED_ENTRIES:
                continue
            if inner == "data.pkl":
                bad = pickle_globals(source.read(info)) - A1111_ALLOWED_GLOBALS
                if bad:
                    names = ", ".join(sorted(f"{m}.{n}" for m, n in bad))
                    raise FormatError(
                        f"cannot write an A1111-loadable .pt: the object pickles globals A1111's safe "
                        f"unpickler refuses ({names}); keep to dicts, lists, numbers, strings and "
                        f"float32/float16 CPU tensors"
                    )
            name = f"{archive_name}/{inner}"
            target.writestr(_aligned_entry(name, out.tell()), source.read(info))
    return out.getvalue()


def save_pt_a1111(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write `obj` as a torch `.pt` zip that A1111 v1.10.1 loads with safe-unpickle on, atomically.

    The archive's top folder is the file stem, as torch names it when saving to a path.
    """
    path = Path(path)
    return write_bytes_atomic(path, a1111_zip_bytes(obj, path.stem))


def _refusal_reason(error: Exception) -> str:
    """The line of torch's weights_only refusal that names the culprit (e.g. 'GLOBAL posix.system')."""
    paragraphs = [p.strip() for p in str(error).split("\n\n") if p.strip()]
    for paragraph in paragraphs:
        if "GLOBAL" in paragraph or "Unsupported" in paragraph:
            return paragraph
    return paragraphs[-1] if paragraphs else type(error).__name__


def torch_load_weights_only(path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """torch's own `load(weights_only=True)` on the CPU, also inside the WebUI.

    A1111 replaces `torch.load` process-wide with its own checker (modules/safe.py), which refuses the
    `.format_version` entries current torch writes and returns None after printing a malware warning.
    `torch.serialization.load` is the function that name pointed to before, and weights_only keeps it from
    running any pickled code.
    """
    import torch.serialization

    return torch.serialization.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_pt(path: str | os.PathLike[str]) -> Any:
    """`torch.load(weights_only=True)` on the CPU; anything beyond plain tensors and containers is refused.

    A file carrying a pickled class or a call (the classic `os.system` payload) raises FormatError and
    nothing in it is executed.
    """

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    try:
        return torch_load_weights_only(path)
    except pickle.UnpicklingError as error:
        raise FormatError(
            f"{path}: refused to load, it holds more than tensors and plain data ({_refusal_reason(error)}); "
            f"it may be malicious, or written by a tool that pickles its own classes"
        ) from error
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as error:
        raise FormatError(f"{path}: not a readable torch .pt file ({error})") from error
