"""The training logs: A1111's loss CSV and TensorBoard scalars.

CSV: the file A1111 writes (`textual_inversion_loss.csv` / `hypernetwork_loss.csv`), with its columns
`step,epoch,epoch_step,loss,learn_rate`, CRLF line ends (csv module default), the loss as "%.7f" and the
rate as Python writes a float ("0.005", "1e-05"). `step` counts optimizer steps from 1; `epoch` and
`epoch_step` count from 0. Rows are appended; on resume, rows past the resumed step (written after the last
state was saved) are dropped first so the file never holds a step twice.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from liandan.atomic_files import write_text_atomic

log = logging.getLogger(__name__)

CSV_COLUMNS = ("step", "epoch", "epoch_step", "loss", "learn_rate")


class LossCsv:
    def __init__(self, path: Path) -> None:
        self.path = path

    def drop_rows_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or tuple(rows[0]) != CSV_COLUMNS:
            log.warning("%s has an unexpected header %s; leaving it as it is", self.path, rows[:1])
            return
        kept = [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= step]
        if len(kept) == len(rows) - 1:
            return
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(kept)
        write_text_atomic(self.path, out.getvalue())

    def append(self, step: int, epoch: int, epoch_step: int, loss: float, learn_rate: float) -> None:
        new_file = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(CSV_COLUMNS)
            writer.writerow([step, epoch, epoch_step, f"{loss:.7f}", learn_rate])


class TensorBoardLog:
    """A1111's scalar names; does nothing when tensorboard is not installed."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            log.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            self.writer: Any = None
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def add(self, step: int, loss: float, learn_rate: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("Loss/train", loss, step)
            self.writer.add_scalar("Learn rate/train", learn_rate, step)

    def add_validation(self, step: int, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("Loss/validation", loss, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
