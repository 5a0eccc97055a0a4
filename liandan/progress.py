"""Progress events and the control channel between a running job and whoever watches it (UI, CLI, A1111).

The loop emits events and polls `Control`; watchers never raise into the loop (a failing callback is logged
and ignored, so a broken UI cannot kill a training run).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """`kind`: "start" | "step" | "save" | "preview" | "message" | "done" | "error"."""

    kind: str
    job: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None
    learn_rate: float | None = None
    message: str = ""
    paths: tuple[Path, ...] = ()
    extra: dict[str, float | str] = field(default_factory=dict)


Listener = Callable[[ProgressEvent], None]


class Control:
    """Requests a watcher makes of a running job; the loop polls them once per step."""

    def __init__(self) -> None:
        self._interrupt = threading.Event()
        self._save_now = threading.Event()
        self._preview_now = threading.Event()

    def interrupt(self) -> None:
        self._interrupt.set()

    def request_save(self) -> None:
        self._save_now.set()

    def request_preview(self) -> None:
        self._preview_now.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def take_save_request(self) -> bool:
        requested = self._save_now.is_set()
        self._save_now.clear()
        return requested

    def take_preview_request(self) -> bool:
        requested = self._preview_now.is_set()
        self._preview_now.clear()
        return requested


class Reporter:
    """Fans events out to listeners, isolating the job from listener failures."""

    def __init__(self, *listeners: Listener) -> None:
        self.listeners: list[Listener] = list(listeners)

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def __call__(self, event: ProgressEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("progress listener failed on %s", event.kind)
