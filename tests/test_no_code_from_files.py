"""No code runs from a file: every reader of pickled files (embeddings, hypernetworks, their .optim sidecars,
checkpoints, image scorers, the run state, `identify`) refuses payloads that would create a marker file, and
the marker never appears. The payloads are the known ways out of a pickle: a call through `__reduce__`
(os.system, builtins.exec, subprocess), a global from a module no weights file needs (numpy's `runstring`,
which executes a string), a nested pickle (`pickle.loads`), and a whole torch file inside the pickle,
loaded by it.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from liandan.errors import LiandanError
from liandan.formats.aesthetic import load_aesthetic
from liandan.formats.embedding import load_embedding, load_embedding_optimizer
from liandan.formats.hypernetwork import load_hypernetwork, load_hypernetwork_optimizer
from liandan.formats.identify import identify
from liandan.models.image_scorer import _read_state_dict
from liandan.models.loading import open_checkpoint


class Call:
    """Pickles as `function(*args)`: what an attacker's object reduces to."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def _touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _numpy_runstring() -> Callable[..., Any] | None:
    try:
        from numpy.testing._private.utils import runstring
    except ImportError:
        return None
    return runstring


def _nested_torch_zip(marker: Path) -> Any:
    """A torch file carrying the os.system payload, loaded by the outer pickle from bytes it holds."""
    inner = io.BytesIO()
    torch.save({"x": Call(os.system, f"touch {marker}")}, inner)
    load = functools.partial(torch.serialization.load, weights_only=False)
    return Call(load, Call(io.BytesIO, inner.getvalue()))


PAYLOADS: dict[str, Callable[[Path], Any]] = {
    "os.system": lambda m: Call(os.system, f"touch {m}"),
    "builtins.exec": lambda m: Call(exec, _touch(m)),
    "subprocess": lambda m: Call(subprocess.call, ["touch", str(m)]),
    "pickle.loads": lambda m: Call(pickle.loads, pickle.dumps(Call(exec, _touch(m)), protocol=2)),
    "nested torch file": _nested_torch_zip,
}
if _numpy_runstring() is not None:
    PAYLOADS["numpy runstring"] = lambda m: Call(_numpy_runstring(), _touch(m), {})

# Each reader with the file name it expects: the payload sits where real content would.
READERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "embedding .pt": ("evil.pt", load_embedding),
    "embedding .bin": ("evil.bin", load_embedding),
    "hypernetwork": ("evil.pt", load_hypernetwork),
    "embedding .optim": ("evil.pt.optim", lambda p: load_embedding_optimizer(p.with_suffix(""), None)),
    "hypernetwork .optim": ("evil.pt.optim", lambda p: load_hypernetwork_optimizer(p.with_suffix(""))),
    "checkpoint .ckpt": ("evil.ckpt", lambda p: open_checkpoint(p).__enter__()),
    "image scorer": ("evil.pt", _read_state_dict),
    "identify": ("evil.pt", identify),
    "aesthetic embedding": ("evil.pt", load_aesthetic),
}


def _write(path: Path, payload: Any, legacy: bool) -> None:
    content = {"string_to_param": {"*": torch.zeros(1, 8)}, "state_dict": {"w": torch.zeros(1)}, "x": payload}
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_no_reader_runs_a_payload(tmp_path: Path, reader: str, payload: str, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    name, read = READERS[reader]
    path = tmp_path / name
    if name.endswith(".optim"):
        (tmp_path / name.removesuffix(".optim")).write_bytes(b"")  # the artifact a sidecar belongs to
    _write(path, PAYLOADS[payload](marker), legacy)
    with pytest.raises(LiandanError):
        read(path)
    assert not marker.exists(), f"{reader} ran the {payload} payload"


def test_the_payloads_do_run_when_unpickled_plainly(tmp_path: Path) -> None:
    """The payloads above are live: torch's unrestricted load runs each one (in a child process)."""
    for name, make in sorted(PAYLOADS.items()):
        marker = tmp_path / f"ran-{name.replace(' ', '-')}"
        path = tmp_path / f"{marker.name}.pt"
        _write(path, make(marker), legacy=False)
        code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
        subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
        assert marker.exists(), f"the {name} payload did not run under a plain torch.load"
