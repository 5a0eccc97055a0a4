"""Hypernetwork `.pt` files exactly as A1111 v1.10.1 reads and writes them, plus the `.optim` sidecar.

The file is a dict: integer widths -> `(k_state_dict, v_state_dict)`, then the metadata keys in A1111's
order. Missing keys get A1111's load defaults (old files: `activate_output` True, `layer_structure`
[1, 2, 1], ...), and legacy `linear1`/`linear2` keys are renamed. The optimizer name and state live in
`<file>.optim`, tied to the hypernetwork by the first 10 hex digits of its file's sha256.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from liandan.errors import ConfigError, FormatError
from liandan.formats.a1111_pickle import load_pt, save_pt_a1111
from liandan.models.hypernetwork_modules import WEIGHT_INITS, Hypernetwork, parse_dropout_structure

_LEGACY_KEYS = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}


def hypernetwork_to_dict(hypernetwork: Hypernetwork) -> dict[Any, Any]:
    """The dict A1111's `Hypernetwork.save` writes, with plain float32 CPU tensors."""
    data: dict[Any, Any] = {}
    for width in hypernetwork.sizes:
        k_module, v_module = hypernetwork.pair(width)  # type: ignore[misc]
        data[width] = (_plain_state_dict(k_module), _plain_state_dict(v_module))
    data.update(
        {
            "step": hypernetwork.step,
            "name": hypernetwork.name,
            "layer_structure": hypernetwork.layer_structure,
            "activation_func": hypernetwork.activation,
            "is_layer_norm": hypernetwork.add_layer_norm,
            "weight_initialization": hypernetwork.weight_init,
            "sd_checkpoint": hypernetwork.sd_checkpoint,
            "sd_checkpoint_name": hypernetwork.sd_checkpoint_name,
            "activate_output": hypernetwork.activate_output,
            "use_dropout": hypernetwork.use_dropout,
            "dropout_structure": hypernetwork.dropout_structure,
            "last_layer_dropout": hypernetwork.last_layer_dropout,
            "optional_info": hypernetwork.optional_info or None,
        }
    )
    return data


def _plain_state_dict(module: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    state = module.state_dict()
    plain = OrderedDict((k, v.detach().to("cpu", torch.float32).contiguous()) for k, v in state.items())
    plain._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]  # as torch keeps it
    return plain


def save_hypernetwork(hypernetwork: Hypernetwork, path: str | os.PathLike[str]) -> Path:
    """Write an A1111-loadable hypernetwork `.pt` (atomic; passes A1111's safe unpickler)."""
    return save_pt_a1111(hypernetwork_to_dict(hypernetwork), path)


def load_hypernetwork(
    path: str | os.PathLike[str], model_widths: Iterable[int] | None = None
) -> Hypernetwork:
    """Read an A1111 hypernetwork `.pt`. With `model_widths` (the model's attention input widths), a file
    whose modules do not fit that model (another family) raises FormatError."""
    path = Path(path)
    data = load_pt(path)
    if not isinstance(data, Mapping):
        raise FormatError(f"{path}: not a hypernetwork file (top level is {type(data).__name__}, not a dict)")
    pairs = {key: value for key, value in data.items() if isinstance(key, int)}
    if not pairs:
        raise FormatError(f"{path}: not a hypernetwork file (no integer width keys such as 768 or 320)")
    if model_widths is not None:
        check_widths(path, pairs, model_widths)

    layer_structure = data.get("layer_structure", [1, 2, 1])
    dropout_structure = data.get("dropout_structure")
    use_dropout = bool(data.get("use_dropout", False))
    if dropout_structure is not None and any(dropout_structure):
        use_dropout = True
    if dropout_structure is None:
        last_layer_dropout = bool(data.get("last_layer_dropout", False))
        dropout_structure = parse_dropout_structure("", layer_structure, use_dropout, last_layer_dropout)
    weight_init = data.get("weight_initialization", "Normal")
    try:
        hypernetwork = Hypernetwork(
            name=data.get("name", path.stem),
            sizes=pairs,
            layer_structure=layer_structure,
            activation=data.get("activation_func"),
            # the init is irrelevant when loading weights; an odd stored value is kept for writing back
            weight_init=weight_init if weight_init in WEIGHT_INITS else "Normal",
            add_layer_norm=bool(data.get("is_layer_norm", False)),
            activate_output=bool(data.get("activate_output", True)),
            use_dropout=use_dropout,
            dropout_structure=dropout_structure,
        )
    except ConfigError as error:
        raise FormatError(f"{path}: {error}") from error
    hypernetwork.weight_init = weight_init
    for width, states in pairs.items():
        _load_pair(path, hypernetwork, width, states)
    hypernetwork.step = data.get("step", 0)
    hypernetwork.sd_checkpoint = data.get("sd_checkpoint")
    hypernetwork.sd_checkpoint_name = data.get("sd_checkpoint_name")
    hypernetwork.optional_info = data.get("optional_info")
    return hypernetwork


def _load_pair(path: Path, hypernetwork: Hypernetwork, width: int, states: Any) -> None:
    if not (
        isinstance(states, tuple | list) and len(states) == 2 and all(isinstance(s, Mapping) for s in states)
    ):
        raise FormatError(f"{path}: width {width} should hold a (k, v) pair of state dicts")
    for module, state in zip(hypernetwork.pair(width), states):  # type: ignore[arg-type]
        renamed = {_LEGACY_KEYS.get(key, key): value for key, value in state.items()}
        try:
            module.load_state_dict(renamed)
        except RuntimeError as error:
            raise FormatError(
                f"{path}: the weights for width {width} do not match its layer structure "
                f"{hypernetwork.layer_structure} / layer norm / activation settings: {error}"
            ) from error


def check_widths(path: Path, pairs: Iterable[int], model_widths: Iterable[int]) -> None:
    widths, model = sorted(pairs), sorted(set(model_widths))
    missing = [w for w in widths if w not in model]
    if missing:
        raise FormatError(
            f"{path}: hypernetwork modules for widths {widths} do not fit this model, whose attention widths "
            f"are {model} (no layer of width {missing}); it was made for another model family"
        )


def optimizer_path(path: str | os.PathLike[str]) -> Path:
    """A1111's sidecar name: `<file>.optim`, e.g. `name.pt.optim`."""
    return Path(f"{os.fspath(path)}.optim")


def file_short_hash(path: str | os.PathLike[str]) -> str:
    """First 10 hex digits of the file's sha256: what A1111 stores as the `.optim` `hash`."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def save_hypernetwork_optimizer(
    path: str | os.PathLike[str], optimizer_name: str, optimizer_state: Mapping[str, Any]
) -> Path:
    """Write `<path>.optim` for the hypernetwork file already saved at `path`."""
    payload = {
        "optimizer_name": optimizer_name,
        "hash": file_short_hash(path),
        "optimizer_state_dict": optimizer_state,
    }
    return save_pt_a1111(payload, optimizer_path(path))


def load_hypernetwork_optimizer(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any] | None]:
    """(optimizer name, state) as A1111 resumes: name defaults to AdamW; the state is None when the sidecar
    is missing or was written for another version of the hypernetwork file."""
    sidecar = optimizer_path(path)
    if not sidecar.is_file():
        return "AdamW", None
    saved = load_pt(sidecar)
    if not isinstance(saved, Mapping):
        raise FormatError(f"{sidecar}: not an optimizer sidecar (top level is {type(saved).__name__})")
    name = saved.get("optimizer_name", "AdamW")
    state = saved.get("optimizer_state_dict") if saved.get("hash") == file_short_hash(path) else None
    return name, state
