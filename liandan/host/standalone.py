"""The host outside A1111: an A1111-like folder tree under one data dir. Used by the CLI, the standalone UI
and the tests.

    <data_dir>/models/Stable-diffusion   checkpoints (the tiny default model is written here on first use)
    <data_dir>/embeddings                textual inversion, APT
    <data_dir>/models/hypernetworks
    <data_dir>/models/Lora
    <data_dir>/models/aesthetic_embeddings
    <data_dir>/textual_inversion         job logs, step copies, previews (A1111's default log dir)
    <data_dir>/textual_inversion_templates   user prompt templates (ours ship in liandan/data/templates)

Copy that tree into an A1111 install (or point A1111's --data-dir at it) and every result is usable there.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.errors import CheckpointError
from liandan.host.base import ArtifactKind, CheckpointRef, Folders
from liandan.progress import Control, Reporter

if TYPE_CHECKING:
    import torch

    from liandan.models.bundle import ModelBundle

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def default_data_dir() -> Path:
    return Path(os.environ.get("LIANDAN_DATA_DIR") or "liandan-data")


def standalone_folders(data_dir: Path) -> Folders:
    models = data_dir / "models"
    return Folders(
        embeddings=data_dir / "embeddings",
        hypernetworks=models / "hypernetworks",
        checkpoints=models / "Stable-diffusion",
        lora=models / "Lora",
        aesthetic_embeddings=models / "aesthetic_embeddings",
        models=models,
        logs=data_dir / "textual_inversion",
        templates=data_dir / "textual_inversion_templates",
    )


def _fine_tuned_here(path: Path) -> bool:
    """A checkpoint liandan fine-tuned (formats/checkpoint.py writes `liandan.trained` into it)."""
    from liandan.formats.checkpoint import read_metadata

    try:
        return "liandan.trained" in read_metadata(path)
    except CheckpointError:
        return False


def list_checkpoint_files(folder: Path) -> list[CheckpointRef]:
    """Checkpoints below `folder` the way A1111 lists them (recursive, no `.vae.` files), plus diffusers
    folders (a `model_index.json`). Titles are paths relative to the folder; hashes are left to the loader
    (hashing multi-GB files to fill a dropdown would make the UI wait)."""
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.rglob("*")
        if (p.is_file() and p.suffix in CHECKPOINT_SUFFIXES and ".vae." not in p.name)
        or (p.is_dir() and (p / "model_index.json").is_file())
    ]
    return [CheckpointRef(path=p, title=p.relative_to(folder).as_posix()) for p in sorted(found)]


def match_checkpoint(refs: list[CheckpointRef], wanted: str) -> CheckpointRef | None:
    """A checkpoint by title, file name or stem (what a job file's `model = "..."` may say)."""
    for ref in refs:
        if wanted in (ref.title, ref.path.name, ref.path.stem, str(ref.path)):
            return ref
    return None


class _BundleCache:
    """The last model loaded in this process, kept pristine: every job trains on a deep copy, because
    methods change what they get (TI adds tokens, DreamBooth rewrites weights)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Path, float] | None = None
        self._bundle: ModelBundle | None = None

    def get(self, path: Path) -> ModelBundle:
        from liandan.models.loading import load_bundle

        key = (path.resolve(), path.stat().st_mtime)
        with self._lock:
            if self._key != key or self._bundle is None:
                self._bundle = None  # free the old model before loading the next
                self._bundle = load_bundle(path)
                self._key = key
            return copy.deepcopy(self._bundle)

    def clear(self) -> None:
        with self._lock:
            self._key, self._bundle = None, None


BUNDLE_CACHE = _BundleCache()


class StandaloneHost:
    name = "standalone"

    def __init__(self, data_dir: Path | None = None, checkpoint: Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.folders = standalone_folders(self.data_dir)
        self.checkpoint = checkpoint
        self.reporter = Reporter()
        self.control = Control()
        for folder in (*self.folders.all(), self.folders.templates):
            folder.mkdir(parents=True, exist_ok=True)

    def list_checkpoints(self) -> list[CheckpointRef]:
        return list_checkpoint_files(self.folders.checkpoints)

    def current_checkpoint(self) -> CheckpointRef | None:
        """The configured checkpoint, else the first in models/Stable-diffusion that is not a result of
        ours (a DreamBooth checkpoint saved there must not become the base of the next job), else the tiny
        default (written there on first use, so a fresh data dir works out of the box)."""
        if self.checkpoint is not None:
            return self._ref(self.checkpoint)
        refs = self.list_checkpoints()
        if not refs:
            from liandan.models.tiny import write_tiny_models

            write_tiny_models(self.folders.checkpoints)
            refs = self.list_checkpoints()
        bases = [ref for ref in refs if not _fine_tuned_here(ref.path)]
        return (bases or refs)[0] if refs else None

    def resolve_checkpoint(self, model: str | Path | None) -> CheckpointRef:
        """A job's `model` setting: "" for the current one, a path, or a name in models/Stable-diffusion."""
        if not model:
            current = self.current_checkpoint()
            if current is None:
                raise CheckpointError(f"no checkpoint in {self.folders.checkpoints}")
            return current
        path = Path(model)
        if path.exists():
            return self._ref(path)
        ref = match_checkpoint(self.list_checkpoints(), str(model))
        if ref is None:
            raise CheckpointError(
                f"checkpoint {str(model)!r} is neither a file nor a model in {self.folders.checkpoints}"
            )
        return ref

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # one process, one job queue: nobody to wait for

    @contextlib.contextmanager
    def model_for_training(self, checkpoint: Path | None = None) -> Iterator[ModelBundle]:
        ref = self.resolve_checkpoint(checkpoint)
        yield BUNDLE_CACHE.get(ref.path)

    def prepare_trainable(self, modules: list[torch.nn.Module]) -> None:
        """Layers run as torch defines them here: nothing to change."""

    def refresh(self, kind: ArtifactKind) -> None:
        """Nothing to refresh: readers list the folders when they need them."""

    def _ref(self, path: Path) -> CheckpointRef:
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            title = path.relative_to(self.folders.checkpoints).as_posix()
        except ValueError:
            title = path.name
        return CheckpointRef(path=path, title=title)
