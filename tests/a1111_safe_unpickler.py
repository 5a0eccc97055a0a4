"""Test oracle: A1111 v1.10.1 `modules/safe.py` check, re-implemented from its source for our tests.

`check_pt(path)` does what a stock WebUI does before `torch.load` when safe-unpickle is on (the default):
every zip entry must be `<dir>/data.pkl|version|byteorder|.data/serialization_id|data/<N>`, exactly one
`data.pkl`, and `data.pkl` must unpickle with only the allowed globals (storages are empty stand-ins, so
nothing is read). A legacy (non-zip) file is unpickled five times. Any failure raises `A1111Refused`.
Kept independent of liandan's own writer so that it can catch a writer bug.
"""

from __future__ import annotations

import _codecs
import collections
import pickle
import re
import zipfile
from pathlib import Path

import numpy
import torch


class A1111Refused(Exception):
    """What A1111 reports as 'Error verifying pickled file' and then refuses to load."""


_ALLOWED_TORCH_STORAGES = [
    "FloatStorage",
    "HalfStorage",
    "IntStorage",
    "LongStorage",
    "DoubleStorage",
    "ByteStorage",
    "float32",
    "BFloat16Storage",
]


class RestrictedUnpickler(pickle.Unpickler):
    def persistent_load(self, saved_id):
        if saved_id[0] != "storage":
            raise A1111Refused(f"persistent id {saved_id[0]!r} is not a storage")
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in [
            "_rebuild_tensor_v2",
            "_rebuild_parameter",
            "_rebuild_device_tensor_from_numpy",
        ]:
            return getattr(torch._utils, name)
        if module == "torch" and name in _ALLOWED_TORCH_STORAGES:
            return getattr(torch, name)
        if module == "torch.nn.modules.container" and name == "ParameterDict":
            return torch.nn.modules.container.ParameterDict
        if module == "numpy.core.multiarray" and name in ["scalar", "_reconstruct"]:
            return getattr(numpy.core.multiarray, name)
        if module == "numpy" and name in ["dtype", "ndarray"]:
            return getattr(numpy, name)
        if module == "_codecs" and name == "encode":
            return _codecs.encode
        if module == "__builtin__" and name == "set":
            return set
        raise A1111Refused(f"global '{module}/{name}' is forbidden")


ALLOWED_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")


def check_pt(path: str | Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                if not ALLOWED_ZIP_NAMES.match(name):
                    raise A1111Refused(f"bad file inside {path}: {name}")
            data_pkls = [n for n in names if DATA_PKL.match(n)]
            if len(data_pkls) != 1:
                raise A1111Refused(f"{len(data_pkls)} data.pkl found in {path}")
            with archive.open(data_pkls[0]) as file:
                _load(RestrictedUnpickler(file))
    except zipfile.BadZipFile:
        with open(path, "rb") as file:
            unpickler = RestrictedUnpickler(file)
            for _ in range(5):
                _load(unpickler)


def _load(unpickler: RestrictedUnpickler) -> None:
    try:
        unpickler.load()
    except A1111Refused:
        raise
    except Exception as error:  # A1111 reports any failure while verifying as a refusal
        raise A1111Refused(f"{type(error).__name__}: {error}") from error
