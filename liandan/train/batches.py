"""The training loop's micro-batches, in the order it consumes them, built inline or by worker processes.

Order: per optimizer step, rank r takes the `accumulation` consecutive batches of the epoch's plan at
`batch_index + r × accumulation`, and `batch_index` moves on by `accumulation × processes` (see
liandan/train/loop.py); an epoch's leftover batches are skipped; a resumed run starts at its saved
(epoch, batch_index). `batch_keys` yields that sequence across epochs, so one iterator serves the whole run
(the workers live as long as it does: no per-epoch restart, no set_epoch in them).

With 0 workers each batch is built in the training process when the loop asks for it, exactly as
`dataset.collate([dataset[i] for i in indices])` after `dataset.set_epoch(epoch)`. With workers, a torch
DataLoader builds them ahead from `dataset.item(index, epoch)` (forked processes; pinned memory on CUDA, so
the loop's non_blocking copy overlaps). Workers never run the VAE (it may sit on the GPU, which a forked
process cannot use): the dataset must have every latent cached (`needs_vae` False), and `drop_vae()` is
called in each worker. An error in a worker reaches the loop as the same exception (type and message).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from liandan.errors import ConfigError

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 2  # building a batch from cached latents is cheap: two keep a GPU fed


def worker_count(requested: int, device: torch.device, dataset: Any) -> int:
    """TrainSpec.data_workers resolved: -1 (auto) is 0 on the CPU (workers would take the compute threads'
    cores) and min(2, cpus - 1) on CUDA; any count is 0 while the VAE runs per item (latent_cache "off")."""
    if requested == 0 or (requested < 0 and device.type != "cuda"):
        return 0
    if dataset.needs_vae:
        if requested > 0:
            log.warning(
                "data_workers = %d not used: the VAE encodes each item (latent_cache 'off')", requested
            )
        return 0
    if "fork" not in multiprocessing.get_all_start_methods():
        if requested < 0:
            return 0
        raise ConfigError(
            f"data_workers = {requested} needs forked worker processes, which this platform does not "
            "have; set data_workers = 0 (or -1)"
        )
    if requested > 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def batch_keys(
    plan_for: Callable[[int], list[list[int]]],
    epoch: int,
    batch_index: int,
    per_step: int,
    first: int,
    accum: int,
) -> Iterator[tuple[int, list[int]]]:
    """(epoch, indices) of each micro-batch this rank trains on, from (epoch, batch_index) on; `first` is
    this rank's offset into a step's `per_step` batches. Ends before an epoch too small for one step
    (which the loop refuses)."""
    while len(plan := plan_for(epoch)) >= per_step:
        for start in range(batch_index, len(plan) - per_step + 1, per_step):
            for indices in plan[start + first : start + first + accum]:
                yield epoch, indices
        epoch, batch_index = epoch + 1, 0


class MicroBatches:
    """`next()` gives the next collated micro-batch (on the host); `close()` stops the workers."""

    def __init__(
        self, dataset: Any, keys: Iterator[tuple[int, list[int]]], workers: int, pin_memory: bool
    ) -> None:
        self._loader_iter = None
        if workers == 0:  # today's inline path: nothing runs ahead, no process starts
            self._batches: Iterator[Any] = (
                dataset.collate([dataset[i] for i in indices]) for _, indices in keys
            )
            return
        built = _Built(dataset)
        loader = DataLoader(
            built,
            sampler=keys,  # each key a whole batch: the worker collates it (batch_size None)
            batch_size=None,
            num_workers=workers,
            collate_fn=_as_is,
            pin_memory=pin_memory,
            worker_init_fn=built.in_worker,
            multiprocessing_context="fork",  # the dataset (its RAM cache) is shared, not pickled
            generator=torch.Generator(),  # the workers' seeds: not drawn from the global RNG training uses
        )
        self._loader_iter = self._batches = iter(loader)

    def __next__(self) -> dict[str, Any]:
        batch = next(self._batches)
        if isinstance(batch, _Failure):
            log.debug("in a data worker:\n%s", batch.traceback)
            raise batch.error
        return batch

    def close(self) -> None:
        if self._loader_iter is not None:
            # what the iterator's __del__ does; called here so it does not wait for the garbage collector
            self._loader_iter._shutdown_workers()


class _Failure:
    """An exception raised in a worker, sent back as data: a DataLoader would re-raise it wrapped, with
    the worker's traceback as its message."""

    def __init__(self, error: Exception) -> None:
        self.traceback = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(error))
        except (pickle.PicklingError, TypeError, AttributeError):  # it cannot cross processes: its words can
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


class _Built(torch.utils.data.Dataset):
    """A whole micro-batch per key, built in a worker; an error comes back as a _Failure."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def in_worker(self, worker_id: int) -> None:
        self.dataset.drop_vae()  # this worker's (forked) copy

    def __getitem__(self, key: tuple[int, list[int]]) -> Any:
        epoch, indices = key
        try:
            return self.dataset.collate([self.dataset.item(i, epoch) for i in indices])
        except Exception as e:  # noqa: BLE001 - whatever it is, the loop raises it as it was
            return _Failure(e)


def _as_is(batch: Any) -> Any:
    return batch
