"""Full-state checkpoints in `<run_dir>/state/` for bit-exact resume.

Files (nothing needs pickled code to load):
- `trainable.safetensors`  the method's trainable weights (`method.trainable_state()`)
- `optimizer.pt`           optimizer (and fp16 grad-scaler) state, loaded with weights_only=True
- `rng.pt`                 python/numpy/torch(/cuda) RNG states, one entry per process
- `meta.json`              step, epoch, position in the epoch's batch plan, early-stop and epoch-loss counters
- `job.json`               the full job spec the run trains (resuming with another spec lists what differs)

A checkpoint is written to `state.new/`, then swapped in with renames (`state` -> `state.old`,
`state.new` -> `state`, delete `state.old`), so a crash leaves a complete old or new state; loading falls
back to `state.old` if the crash hit between the two renames. Only the last state is kept.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from liandan.atomic_files import write_text_atomic
from liandan.errors import CheckpointError
from liandan.formats.a1111_pickle import load_error_summary, torch_load_weights_only

STATE_DIR = "state"
FORMAT_VERSION = 1
# Settings a resume may change without a word: how long and how often, not what trains.
RESUME_MAY_CHANGE = (
    "train.max_steps",
    "train.resume",
    "train.resume_with_changes",
    "train.save_every",
    "train.preview_every",
    "train.log_every",
    "train.data_workers",  # the batches are the same with any count
    "train.cpu_threads",  # how fast, not what: the same sums in another order
    "train.torch_compile",
    "preview.",
    "log_dir",
)


@dataclass
class LoopPosition:
    """Where the loop stands after `step` optimizer steps: the next batch is `plan(epoch)[batch_index]`."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_epoch_loss: float | None = None
    epochs_without_improvement: int = 0
    method_kind: str = ""
    method_name: str = ""
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain values (loadable with weights_only=True)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt_state.tolist()), gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_kind, np_keys.numpy().astype(np.uint32), int(np_pos), int(np_has_gauss), float(np_gauss))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run side work (previews, saves) without moving the training RNG, so resume stays bit-exact."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def _cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; a contiguous CPU clone of each tensor avoids that.
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def save_state(
    run_dir: Path,
    position: LoopPosition,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    rng_per_process: list[dict[str, Any]],
    job_spec: dict[str, Any],
) -> Path:
    """Write a full state (call on the main process only) and return its folder."""
    final = run_dir / STATE_DIR
    building = run_dir / f"{STATE_DIR}.new"
    previous = run_dir / f"{STATE_DIR}.old"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    save_file(_cpu_copy(trainable), str(building / "trainable.safetensors"))
    torch.save(optimizer_state, building / "optimizer.pt")
    torch.save(rng_per_process, building / "rng.pt")
    meta = {"format_version": FORMAT_VERSION, **asdict(position)}
    write_text_atomic(building / "meta.json", json.dumps(meta, indent=1))
    write_text_atomic(building / "job.json", json.dumps(job_spec, indent=1, sort_keys=True))
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        final.rename(previous)
    building.rename(final)
    shutil.rmtree(previous, ignore_errors=True)
    return final


@dataclass
class LoadedState:
    position: LoopPosition
    trainable: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng_per_process: list[dict[str, Any]]
    folder: Path
    job_spec: dict[str, Any] | None  # None: a state written before job.json existed


def find_state(run_dir: Path) -> Path | None:
    for name in (STATE_DIR, f"{STATE_DIR}.old"):
        folder = run_dir / name
        if (folder / "meta.json").is_file():
            return folder
    return None


def load_state(folder: Path) -> LoadedState:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.pop("format_version", None) != FORMAT_VERSION:
            raise CheckpointError(
                f"{folder}: training state of an unknown format version; delete it to start over"
            )
        position = LoopPosition(**meta)
        trainable = load_file(str(folder / "trainable.safetensors"))
        optimizer_state = torch_load_weights_only(folder / "optimizer.pt")
        rng = torch_load_weights_only(folder / "rng.pt")
        job_file = folder / "job.json"
        job_spec = json.loads(job_file.read_text(encoding="utf-8")) if job_file.is_file() else None
    except (OSError, ValueError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(
            f"training state in {folder} cannot be read ({load_error_summary(e)}); delete that folder to "
            "start over, or set resume = false"
        ) from e
    return LoadedState(position, trainable, optimizer_state, rng, folder, job_spec)


def _flatten(spec: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys, list items by index: {"train": {"seed": 0}, "extra_data": [{"folder": "a"}]} ->
    {"train.seed": 0, "extra_data.0.folder": "a"}."""
    items = spec.items() if isinstance(spec, dict) else enumerate(spec) if isinstance(spec, list) else None
    if items is None:
        return {prefix.rstrip("."): spec}  # an empty list adds no key: the same as no list
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def spec_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'train.learn_rate: '0.01' -> '0.02'' for each setting that differs and matters to what trains."""
    old, new = _flatten(saved), _flatten(current)

    def shown(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(not set)"

    return [
        f"{key}: {shown(old, key)} -> {shown(new, key)}"
        for key in sorted(old.keys() | new.keys())
        if not key.startswith(RESUME_MAY_CHANGE) and old.get(key, ...) != new.get(key, ...)
    ]
