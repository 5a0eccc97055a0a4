"""Writing `.pt` files that a stock A1111 (safe-unpickle on) accepts, and reading `.pt` files safely.

A1111 v1.10.1 `modules/safe.py` checks every zip entry name against `data.pkl`, `version`, `byteorder`,
`.data/serialization_id` and `data/N`, and unpickles `data.pkl` with an allowlist of globals. Recent torch
also writes `.format_version` and `.storage_alignment`, which that check rejects, so we let torch serialize
into memory and rewrite the zip without them (data records stay 64-byte aligned, as torch lays them out).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

from liandan.atomic_files import write_bytes_atomic
from liandan.errors import FormatError

# The globals A1111's RestrictedUnpickler lets through (v1.10.1): what we write must keep to them, and what
# we read may use no others.
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
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),
        ("pytorch_lightning.callbacks", "model_checkpoint"),
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
        ("__builtin__", "set"),
    }
)
# Zip entries A1111 refuses although torch writes them (torch >= 2.5 or so).
_DROPPED_ENTRIES = (".format_version", ".storage_alignment")
_ALIGNMENT = 64
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # a fixed timestamp keeps the bytes reproducible
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# How torch's weights-only refusal names the culprit: "GLOBAL posix.system" (>= 2.4), "Unsupported class X".
_REFUSED_GLOBAL = re.compile(r"(?:GLOBAL|Unsupported class) ([\w.]+)")


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


class _Refused(pickle.UnpicklingError):
    """A global outside A1111's allowlist: the file is refused before anything in it runs."""


class _A1111Unpickler(pickle.Unpickler):
    """Resolves exactly the globals A1111's RestrictedUnpickler resolves, and refuses every other.

    torch maps storage names (`torch.BoolStorage`, ...) to dtypes itself before asking; that runs no code.
    """

    def find_class(self, module: str, name: str) -> Any:
        # numpy 2 pickles numpy.core's functions under their new home, numpy._core: the same functions
        allowed_as = (
            module.replace("numpy._core.", "numpy.core.", 1) if module.startswith("numpy._core.") else module
        )
        if (allowed_as, name) not in A1111_ALLOWED_GLOBALS:
            raise _Refused(f"it refers to {module}.{name}, which A1111's safe unpickler forbids too")
        if module == "__builtin__":  # protocol-2 name of builtins
            return set
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as error:  # pytorch_lightning's, allowed by A1111 but maybe not installed
            raise _Refused(f"it refers to {module}.{name}, and {error.name} is not installed") from error


def _restricted_load(file: IO[bytes], **options: Any) -> Any:
    return _A1111Unpickler(file, **options).load()


# What torch.load asks of a pickle module: the legacy format reads its header with `load`.
_A1111_PICKLE = SimpleNamespace(
    __name__="liandan_a1111_pickle", Unpickler=_A1111Unpickler, load=_restricted_load
)


def _torch_load(path: Path, **options: Any) -> Any:
    """torch's own loader on the CPU, also inside the WebUI.

    A1111 replaces `torch.load` process-wide with its own checker (modules/safe.py), which refuses the
    `.format_version` entries current torch writes and returns None after printing a malware warning.
    `torch.serialization.load` is the function that name pointed to before.
    """
    import torch.serialization

    return torch.serialization.load(path, map_location="cpu", **options)


def torch_load_weights_only(path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """torch's `load(weights_only=True)`: for our own state files and model weights."""
    return _torch_load(Path(path), weights_only=True, mmap=mmap)


def load_error_summary(error: Exception) -> str:
    """One plain clause for an error from torch's loader, to put in a message: the refused global of a
    weights-only refusal, else the first sentence, without terminal escape codes or torch's advice."""
    refused = _REFUSED_GLOBAL.search(str(error))
    if isinstance(error, pickle.UnpicklingError) and refused:
        return f"it refers to {refused.group(1)}, which a weights-only load refuses; nothing in it was run"
    lines = _ESCAPES.sub("", str(error)).strip().splitlines()
    line = "".join(c for c in (lines[0] if lines else "") if c.isprintable())
    return line.split(". ")[0].rstrip(".")[:160] or type(error).__name__


def load_pt(path: str | os.PathLike[str]) -> Any:
    """Read a `.pt`/`.bin` on the CPU with A1111's allowlist of globals, so the same files load here as
    in a stock WebUI (old embeddings pickle a `torch.nn.ParameterDict`) and nothing else is resolved.

    A file carrying a pickled class or a call (the classic `os.system` payload) raises FormatError and
    nothing in it is executed; every refusal is one sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    try:
        return _torch_load(path, weights_only=False, pickle_module=_A1111_PICKLE)
    except _Refused as error:
        raise FormatError(f"{path}: refused to load, because {error}; nothing in it was run") from error
    except Exception as error:  # torch's reader on a damaged file: zip, struct, assertion, memory errors...
        detail = load_error_summary(error)
        raise FormatError(f"{path}: not a PyTorch file, or a corrupt one ({detail})") from error
