from __future__ import annotations

import argparse
from typing import Any

from modules import record

cmd_opts = argparse.Namespace()


class State:
    """shared_state.State: the fields A1111's progress API and console read."""

    def __init__(self) -> None:
        self.interrupted = False
        self.stopping_generation = False  # Interrupt's second stage in 1.8+ ("stop after this image")
        self.skipped = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.textinfo: str | None = None
        self.history: list[tuple] = []

    def begin(self, job: str = "(unknown)") -> None:
        """Like A1111's: resets everything a running generation relies on (its Interrupt flags included)."""
        self.job, self.job_no, self.job_count, self.textinfo = job, 0, -1, None
        self.sampling_step, self.interrupted, self.stopping_generation, self.skipped = 0, False, False, False
        self.history.append(("begin", job))

    def end(self) -> None:
        self.history.append(("end", self.job, self.job_no, self.job_count))
        self.job, self.job_count = "", 0

    def interrupt(self) -> None:
        self.interrupted = True

    def stop_generating(self) -> None:
        self.stopping_generation = True


class OptionInfo:
    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Any = None,
        section: tuple | None = None,
        refresh: Any = None,
        **kwargs: Any,
    ) -> None:
        self.default, self.label, self.component, self.section = default, label, component, section
        self.component_args = component_args

    def info(self, info: str) -> OptionInfo:
        self.comment_after = info
        return self


class Options:
    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        raise AttributeError(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value


state = State()
opts = Options()


def reload_hypernetworks() -> None:
    record("reload_hypernetworks")


def refresh_checkpoints() -> None:
    record("refresh_checkpoints")
