"""Data workers (liandan/train/batches.py): the same micro-batches in the same order with and without worker
processes, across epochs, with accumulation, several ranks and a resume; a worker's error as it was raised;
the workers gone however training ends; auto's choice."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from data_helpers import tiny_vae
from helpers_toy_method import ToyDataset, ToyMethod, csv_losses, train_toy

from liandan.data.dataset import DatasetMix, TrainingDataset
from liandan.errors import ConfigError, DatasetError
from liandan.jobs import DataSpec, TrainSpec
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.train.batches import MicroBatches, batch_keys, worker_count
from liandan.train.loop import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


class ToyItems(ToyDataset):
    """The toy dataset with what workers need; item `bad` raises the DatasetError a missing image would."""

    needs_vae = False

    def __init__(self, num_items: int = 8, bad: int | None = None) -> None:
        super().__init__(num_items)
        self.bad = bad

    def item(self, index: int, epoch: int) -> dict[str, Any]:
        if index == self.bad:
            raise DatasetError(f"item {index}: image missing")
        self.epoch = epoch  # of this worker's copy
        return self[index]

    def drop_vae(self) -> None:
        pass  # it has none


def _loop_order(plan_for, epoch: int, batch_index: int, per_step: int, first: int, accum: int, count: int):
    """(epoch, indices) as the loop consumes them: the plan's slices, step by step, epoch by epoch."""
    keys = []
    while len(keys) < count:
        plan = plan_for(epoch)
        while batch_index + per_step <= len(plan) and len(keys) < count:
            keys += [(epoch, b) for b in plan[batch_index + first : batch_index + first + accum]]
            batch_index += per_step
        epoch, batch_index = epoch + 1, 0
    return keys[:count]


def _take(batches: MicroBatches, epochs: list[int], set_epoch=None) -> list[dict[str, Any]]:
    """One batch per epoch listed; `set_epoch` first, as the loop does (the inline path reads it)."""
    taken = []
    for epoch in epochs:
        if set_epoch is not None:
            set_epoch(epoch)
        taken.append(next(batches))
    return taken


def _same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_the_keys_follow_the_loops_order_from_a_resume_position_for_each_rank() -> None:
    def plan_for(epoch: int) -> list[list[int]]:  # 7 batches: one left over at accumulation 2 x 3 ranks
        return [[epoch * 10 + b] for b in range(7)]

    for rank in range(3):
        first = rank * 2
        keys = list(itertools.islice(batch_keys(plan_for, 1, 0, 6, first, 2), 12))
        assert keys == _loop_order(plan_for, 1, 0, 6, first, 2, 12)
    resumed = batch_keys(plan_for, 2, 6, 6, 0, 2)  # a saved position at an epoch's leftover batch
    assert next(resumed) == (3, [30])
    assert list(batch_keys(lambda epoch: [[0]], 0, 0, 2, 0, 2)) == []  # too small for a step: no batch


@pytest.fixture
def cached_dataset(train64: Path, tmp_path: Path) -> DatasetMix:
    """Per-(epoch, index) flips and latent samples, two datasets, the disk cache filled."""
    vae = tiny_vae()
    parts = []
    for number, repeats in enumerate((3, 1)):
        spec = DataSpec(folder=train64, width=64, height=64, flip=0.5, latent_sampling="random",
                        repeats=repeats, latent_cache="disk", shuffle_tags=True)  # fmt: skip
        parts.append(
            TrainingDataset(spec, name=f"n{number}", vae=vae, batch_size=2, cache_dir=tmp_path / "cache")
        )
    dataset = DatasetMix(parts)
    dataset.cache_latents()
    assert not dataset.needs_vae
    return dataset


def test_workers_build_the_same_batches_as_the_training_process(cached_dataset: DatasetMix) -> None:
    plan_for = cached_dataset.batch_plan  # 8 batches an epoch: 6 of the first dataset, 2 of the second
    count = 21  # accumulation 3 from batch 3 of epoch 1 (a resume): past three epoch ends
    expected_keys = _loop_order(plan_for, 1, 3, 3, 0, 3, count)
    assert len({epoch for epoch, _ in expected_keys}) == 4

    inline = MicroBatches(cached_dataset, batch_keys(plan_for, 1, 3, 3, 0, 3), 0, pin_memory=False)
    epochs = [epoch for epoch, _ in expected_keys]
    expected = _take(inline, epochs, cached_dataset.set_epoch)
    for batch, (epoch, indices) in zip(expected, expected_keys):
        by_item = cached_dataset.collate([cached_dataset.item(i, epoch) for i in indices])
        assert batch["prompts"] == by_item["prompts"] and torch.equal(batch["latents"], by_item["latents"])
    assert any(b["flipped"].any() for b in expected) and any(not b["flipped"].all() for b in expected)

    cached_dataset.set_epoch(0)  # workers read no epoch from the dataset
    workers = MicroBatches(cached_dataset, batch_keys(plan_for, 1, 3, 3, 0, 3), 2, pin_memory=False)
    try:
        assert len(multiprocessing.active_children()) == 2
        _same_batches(_take(workers, epochs), expected)
    finally:
        workers.close()
    assert multiprocessing.active_children() == []


def test_an_error_in_a_worker_is_raised_as_it_was_and_the_worker_has_no_vae(
    cached_dataset: DatasetMix, tmp_path: Path
) -> None:
    for entry in (tmp_path / "cache").iterdir():  # the cache lost after caching
        entry.unlink()
    batches = MicroBatches(cached_dataset, batch_keys(cached_dataset.batch_plan, 0, 0, 1, 0, 1), 2, False)
    try:
        with pytest.raises(
            DatasetError, match=r"^the latent of \S+img\d\.png is not cached and no VAE"
        ) as caught:
            next(batches)
    finally:
        batches.close()
    assert type(caught.value) is DatasetError and "Traceback" not in str(caught.value)
    assert cached_dataset.parts[0].vae is not None  # only the workers' copies dropped it


def test_training_with_workers_gives_the_same_weights_and_resumes_exactly(tmp_path: Path) -> None:
    # 8 batches of 1, accumulation 3: two steps an epoch, two batches left over; the noise: the global RNG
    spec = TrainSpec(learn_rate="0.01", max_steps=12, batch_size=1, gradient_accumulation=3, save_every=0,
                     preview_every=0)  # fmt: skip
    inline, _ = train_toy(tmp_path / "inline", spec, dataset=ToyItems())
    workers, _ = train_toy(tmp_path / "workers", spec.replace(data_workers=2), dataset=ToyItems())
    assert multiprocessing.active_children() == []
    for a, b in zip(inline.net.parameters(), workers.net.parameters()):
        assert torch.equal(a, b)

    control = Control()

    def interrupt_at_5(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 5:  # mid-epoch
            control.interrupt()

    resumed_dir = tmp_path / "resumed"
    first = ToyMethod(resumed_dir / "out")
    stopped = train(first, ToyItems(), spec, run_dir=resumed_dir / "run",
                    reporter=Reporter(interrupt_at_5), control=control, tensorboard=False)  # fmt: skip
    assert stopped.interrupted and multiprocessing.active_children() == []
    events: list[ProgressEvent] = []  # resumed with workers: a change that needs no word
    resumed_method = ToyMethod(resumed_dir / "out", seed=9)
    resumed, result = train_toy(
        resumed_dir, spec.replace(data_workers=2), resumed_method, events=events, dataset=ToyItems()
    )
    assert result.start_step == 5 and result.step == 12
    assert not any("changed settings" in (e.message or "") for e in events)
    for a, b in zip(inline.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    assert csv_losses(tmp_path / "inline") == csv_losses(resumed_dir)


def test_a_worker_error_stops_training_with_it_and_no_worker_is_left(tmp_path: Path) -> None:
    spec = TrainSpec(max_steps=20, batch_size=2, save_every=0, preview_every=0, data_workers=2)
    events: list[ProgressEvent] = []
    with pytest.raises(DatasetError, match=r"^item 5: image missing$"):
        train_toy(tmp_path, spec, events=events, dataset=ToyItems(bad=5))
    assert multiprocessing.active_children() == []
    assert [e.message for e in events if e.kind == "error"] == ["item 5: image missing"]


def test_auto_is_no_workers_on_the_cpu_and_none_run_while_the_vae_encodes_per_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="data_workers"):
        TrainSpec(data_workers=-2)
    cached, encoding = ToyItems(), ToyItems()
    encoding.needs_vae = True
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert worker_count(-1, CPU, cached) == 0
    assert worker_count(-1, CUDA, cached) == 2
    assert worker_count(3, CPU, cached) == 3 and worker_count(3, CUDA, cached) == 3
    assert worker_count(0, CUDA, cached) == 0
    assert worker_count(-1, CUDA, encoding) == 0 and worker_count(3, CPU, encoding) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert worker_count(-1, CUDA, cached) == 0  # the one core trains
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # Windows
    assert worker_count(-1, CUDA, cached) == 0
    with pytest.raises(ConfigError, match="data_workers = 2 needs forked worker processes"):
        worker_count(2, CUDA, cached)


@pytest.mark.slow
def test_a_textual_inversion_job_with_workers_trains_the_same_embedding(
    train64: Path, tmp_path: Path
) -> None:
    from test_textual_inversion import make_job

    from liandan.formats.embedding import load_embedding
    from liandan.host.standalone import StandaloneHost
    from liandan.job_runner import run_job

    vectors = []
    for workers in (0, 2):
        host = StandaloneHost(tmp_path / f"data{workers}")
        job = make_job(train64, train={"max_steps": 4, "save_every": 0, "preview_every": 0, "batch_size": 2,
                                       "gradient_accumulation": 2, "data_workers": workers},
                       data={"flip": 0.5, "latent_sampling": "random"}, preview={"self_test": False},
                       save_png_cards=False)  # fmt: skip
        events: list[ProgressEvent] = []
        result = run_job(job, host, Reporter(events.append), Control())
        assert result.step == 4 and multiprocessing.active_children() == []
        said = [e.message for e in events if e.kind == "message" and "worker process" in (e.message or "")]
        assert said == ([f"{workers} worker process(es) build the batches"] if workers else [])
        vectors.append(load_embedding(host.folders.embeddings / "testti.pt").single)
    assert torch.equal(*vectors)
