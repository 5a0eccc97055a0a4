"""A1111's `.optim` sidecar, as every method keeps it: the loop's optimizer is attached once, the sidecar of
an artifact trained earlier is loaded into it when it fits, and each save writes the current state beside
the file. The file formats (what a sidecar holds, which checksum) are each artifact's own, in `formats/`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class OptimizerSidecar:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.optimizer: Any = None
        self._say = say

    def attach(self, optimizer: Any, saved: dict[str, Any] | None, source: Path | None) -> None:
        """Keep `optimizer`; start it from `saved` (the state read from `source`'s sidecar) when given and it
        fits this optimizer, else say why it is not used."""
        self.optimizer = optimizer
        if saved is None or source is None:
            return
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as error:
            self._say(f"{source}.optim does not fit this optimizer ({error}); not used")
            return
        self._say(f"continuing with the optimizer state saved in {source}.optim")

    def state_dict(self) -> dict[str, Any] | None:
        """What to write beside a save; None before the loop attached its optimizer."""
        return None if self.optimizer is None else self.optimizer.state_dict()
