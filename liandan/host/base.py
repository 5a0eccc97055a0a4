"""The Host protocol: everything the engine needs from its surroundings, as plain data and calls.

Two hosts implement it: `standalone.StandaloneHost` (an A1111-like folder tree under a data dir) and
`webui.WebUIHost` (the running A1111, the only module that imports `modules.*`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from liandan.models.bundle import ModelBundle
    from liandan.progress import Control, Reporter

ArtifactKind = Literal["embeddings", "hypernetworks", "checkpoints", "lora", "aesthetic_embeddings"]


@dataclass(frozen=True)
class Folders:
    """Where A1111 looks for each artifact, and where we write logs and previews."""

    embeddings: Path
    hypernetworks: Path
    checkpoints: Path
    lora: Path
    aesthetic_embeddings: Path
    models: Path  # A1111's models/ (torch_deepdanbooru, BLIP, ... live below it)
    logs: Path  # default log directory of training jobs (A1111: "textual_inversion")
    templates: Path  # prompt template files ([name], [filewords])

    def for_kind(self, kind: ArtifactKind) -> Path:
        return getattr(self, kind)

    def all(self) -> Iterator[Path]:
        yield from (
            self.embeddings,
            self.hypernetworks,
            self.checkpoints,
            self.lora,
            self.aesthetic_embeddings,
            self.models,
            self.logs,
        )


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint the host knows: its file, A1111's title/short hash, and family if known."""

    path: Path
    title: str
    short_hash: str | None = None
    family: str | None = None


@runtime_checkable
class Host(Protocol):
    name: str
    folders: Folders
    reporter: Reporter
    control: Control

    def current_checkpoint(self) -> CheckpointRef | None:
        """The checkpoint selected now (A1111's top-left dropdown; standalone: configured or tiny default)."""
        ...

    def list_checkpoints(self) -> list[CheckpointRef]: ...

    def resolve_checkpoint(self, model: str | Path | None) -> CheckpointRef:
        """A job's `model` setting ("" for the current checkpoint, a path, or a name the host lists) as one
        reference; CheckpointError when there is none. A job resolves it once and carries the result."""
        ...

    def model_for_training(self, checkpoint: Path | None = None) -> AbstractContextManager[ModelBundle]:
        """Context manager giving a ModelBundle to train on. Inside A1111 it frees the WebUI's VRAM on
        entry and restores the WebUI model on exit, whatever happens in between."""
        ...

    def prepare_trainable(self, modules: list[torch.nn.Module]) -> None:
        """Called once a method has built its trainable modules, before the first step: anything the host
        changes about how layers run applies to them too (inside A1111: torch's own layer forwards, as for
        the bundle's). Standalone: nothing to do."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold the host for a job that needs no model of the host's (preprocessing, captioning). Inside
        A1111 that is its queue lock, as for its own jobs: a txt2img waits, and the WebUI's progress and
        Interrupt are the job's. Standalone: nothing to hold."""
        ...

    def refresh(self, kind: ArtifactKind) -> None:
        """Make a newly written artifact usable at once (A1111 lists reloaded; standalone: no-op)."""
        ...
