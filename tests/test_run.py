"""A run's side work on the toy denoiser: resume, saves, previews and the self-test, validation, early stop,
interrupts, and the memory a save leaves."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from helpers_toy_method import ToyDataset, ToyMethod, csv_losses, same_tensors, train_toy
from safetensors.torch import load_file

from liandan.errors import CheckpointError
from liandan.jobs import TrainSpec
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.train.loop import TrainResult, Validation, train
from liandan.train.method import SavedArtifact


@pytest.mark.parametrize(
    ("gradient_sync", "options"),
    [
        ("all_reduce", {}),
        ("prepare", {}),
        ("all_reduce", {"optimizer": "Prodigy", "learn_rate": "1"}),  # its d estimate is state too
        ("prepare", {"optimizer": "AdamWScheduleFree"}),  # previews at 5 switch to eval and back
        ("all_reduce", {"ema_decay": 0.8, "ema_update_every": 2}),  # the average is state too
        ("all_reduce", {"fused_backward": True}),  # the state of every per-tensor optimizer
        ("prepare", {"fused_backward": True, "optimizer": "AdamWScheduleFree"}),
    ],
)
def test_resume_is_bit_exact(tmp_path: Path, gradient_sync: str, options: dict) -> None:
    spec = TrainSpec(learn_rate="0.01", max_steps=12, batch_size=3, save_every=0, preview_every=5)
    spec = spec.replace(**options)
    straight = ToyMethod(tmp_path / "straight" / "out", gradient_sync=gradient_sync)
    train_toy(tmp_path / "straight", spec, method=straight, preview_prompt="p")

    control = Control()

    def interrupt_at_7(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 7:  # mid-epoch: 8 items / batch 3 = 2 steps per epoch
            control.interrupt()

    method = ToyMethod(tmp_path / "resumed" / "out", gradient_sync=gradient_sync)
    result = train(
        method,
        ToyDataset(8),
        spec,
        run_dir=tmp_path / "resumed" / "run",
        reporter=Reporter(interrupt_at_7),
        control=control,
        preview_prompt="p",
        tensorboard=False,
    )
    assert result.interrupted and result.step == 7
    assert method.saves[-1] == (7, True)
    # A fresh process would build everything anew: a new method with other initial weights.
    resumed, result = train_toy(
        tmp_path / "resumed",
        spec,
        method=ToyMethod(tmp_path / "resumed" / "out", seed=99, gradient_sync=gradient_sync),
        preview_prompt="p",
    )
    assert result.start_step == 7 and result.step == 12
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    assert csv_losses(tmp_path / "straight") == csv_losses(tmp_path / "resumed")
    saved = [load_file(str(tmp_path / run / "out" / "toy.safetensors")) for run in ("straight", "resumed")]
    assert same_tensors(*saved)  # the artifact too (an EMA or schedule-free's average, where it differs)


def test_interrupt_saves_state_and_artifact_and_returns(tmp_path: Path) -> None:
    control = Control()
    control.interrupt()  # already set: the first step ends, then the loop stops
    events: list[ProgressEvent] = []
    method, result = train_toy(tmp_path, TrainSpec(max_steps=50), events=events, control=control)
    assert result.interrupted and result.step == 1
    assert method.saves == [(1, True)]
    assert (tmp_path / "run" / "state" / "meta.json").is_file()
    assert events[-1].kind == "done" and "interrupted" in events[-1].message


def test_save_and_preview_requests_are_honoured(tmp_path: Path) -> None:
    control = Control()

    def request(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 2:
            control.request_save()
            control.request_preview()

    method = ToyMethod(tmp_path / "out")
    train(
        method,
        ToyDataset(8),
        TrainSpec(max_steps=4, save_every=0, preview_every=0),
        run_dir=tmp_path / "run",
        reporter=Reporter(request),
        control=control,
        preview_prompt="a cat",
        preview_seed=5,
        tensorboard=False,
    )
    assert method.saves == [(2, False), (4, True)]
    assert (tmp_path / "run" / "images" / "toy-2.png").is_file()
    assert (tmp_path / "run" / "images" / "toy-2-selftest.png").is_file()
    assert ("a cat", 5, False) in method.previews


def test_self_test_warns_when_the_artifact_changes_nothing(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    method = ToyMethod(tmp_path / "out", preview_ignores_artifact=True)
    train_toy(
        tmp_path, TrainSpec(max_steps=2, save_every=0), method=method, events=events, preview_prompt="p"
    )
    warnings = [e.message for e in events if e.kind == "message"]
    assert any("changes nothing" in m for m in warnings)


def test_early_stop_when_the_epoch_loss_stops_improving(tmp_path: Path) -> None:
    # lr 0, the same data every epoch: no epoch beats the first one.
    class SameEveryEpoch(ToyDataset):
        def set_epoch(self, epoch: int) -> None:
            pass

    spec = TrainSpec(learn_rate="0", max_steps=1000, batch_size=4, early_stop_epochs=2, save_every=0)
    _, result = train_toy(
        tmp_path,
        spec,
        method=ToyMethod(tmp_path / "out", global_rng=False),
        dataset=SameEveryEpoch(8),
        batch_plan=lambda epoch: [[0, 1, 2, 3], [4, 5, 6, 7]],
    )
    assert result.stopped_reason == "early_stop"
    assert "not improved for 2 epoch(s)" in result.message
    assert result.step == 6  # 2 steps per epoch, epochs 1 and 2 are no better than epoch 0


def test_resume_of_a_finished_run_does_nothing(tmp_path: Path) -> None:
    spec = TrainSpec(max_steps=3, save_every=0)
    train_toy(tmp_path, spec)
    method, result = train_toy(tmp_path, spec)
    assert result.stopped_reason == "already_done" and method.loss_calls == 0


def test_schedule_free_saves_and_previews_its_eval_weights_and_trains_on_from_its_train_point(
    tmp_path: Path,
) -> None:
    from liandan.formats.a1111_pickle import torch_load_weights_only
    from liandan.train.optimizers import build_optimizer, set_optimizer_mode

    class Watching(ToyMethod):
        def preview(self, prompt, seed, enabled):
            self.previewed = self.trainable_state()
            return super().preview(prompt, seed, enabled)

    spec = TrainSpec(learn_rate="0.01", optimizer="AdamWScheduleFree", max_steps=6, save_every=3)
    method, _ = train_toy(tmp_path, spec, method=Watching(tmp_path / "out"), preview_prompt="p")
    saved = load_file(str(tmp_path / "out" / "toy.safetensors"))
    train_point = method.trainable_state()  # the loop leaves the weights at the training point
    assert not same_tensors(saved, train_point)
    assert same_tensors(method.previewed, saved)  # the final self-test renders what was saved
    # what eval mode makes of the saved training state is exactly the file
    optimizer = build_optimizer("AdamWScheduleFree", method.parameter_groups(), 0.0, 0.0)
    optimizer.load_state_dict(
        torch_load_weights_only(tmp_path / "run" / "state" / "optimizer.pt")["optimizer"]
    )
    method.load_trainable_state(load_file(str(tmp_path / "run" / "state" / "trainable.safetensors")))
    assert same_tensors(method.trainable_state(), train_point)
    set_optimizer_mode(optimizer, training=False)
    assert same_tensors(method.trainable_state(), saved)


def test_resuming_with_other_settings_says_what_differs_and_refuses(tmp_path: Path) -> None:
    first = TrainSpec(learn_rate="0.01", max_steps=3, save_every=0)
    train_toy(tmp_path, first)
    longer = first.replace(max_steps=5)  # training on for longer is what resume is for: no question
    with pytest.raises(CheckpointError, match=r"train.learn_rate: '0.01' -> '0.02'.*resume_with_changes"):
        train_toy(tmp_path, longer.replace(learn_rate="0.02"))
    events: list[ProgressEvent] = []
    _, result = train_toy(
        tmp_path, longer.replace(learn_rate="0.02", resume_with_changes=True), events=events
    )
    assert result.start_step == 3 and result.step == 5
    assert any("resuming with changed settings: train.learn_rate" in e.message for e in events)
    _, result = train_toy(
        tmp_path, longer.replace(max_steps=6, learn_rate="0.02")
    )  # the state now holds 0.02
    assert result.start_step == 5 and result.step == 6


def test_validation_scores_a_held_out_set_at_fixed_noise(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    spec = TrainSpec(learn_rate="0.02", max_steps=30, save_every=0)
    validation = Validation(ToyDataset(4, seed=5), every=10, timesteps=(0, 500, 999))
    _, result = train_toy(tmp_path / "v", spec, events=events, validation=validation)
    assert [step for step, _ in result.validation_losses] == [10, 20, 30]
    losses = [loss for _, loss in result.validation_losses]
    assert losses[-1] < losses[0]
    assert [e.extra["validation_loss"] for e in events if "validation_loss" in e.extra] == losses
    train_toy(tmp_path / "plain", spec)  # scoring leaves the training RNG alone: the same run without it
    assert csv_losses(tmp_path / "v") == csv_losses(tmp_path / "plain")
    frozen = Validation(ToyDataset(4, seed=5), every=1, timesteps=(0, 500, 999))
    _, result = train_toy(tmp_path / "frozen", spec.replace(learn_rate="0", max_steps=3), validation=frozen)
    assert len({loss for _, loss in result.validation_losses}) == 1  # same weights, same noise: same score


class _LeavesACycle(ToyMethod):
    """Its save leaves garbage in a reference cycle, which only the cycle collector frees."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.left: weakref.ref | None = None
        self.alive_at_loss: list[bool] = []

    def save(self, step: int, final: bool) -> SavedArtifact:
        cycle: dict = {"pixels": torch.zeros(1000)}
        cycle["self"] = cycle
        self.left = weakref.ref(cycle["pixels"])
        return super().save(step, final)

    def loss(self, batch):
        if self.left is not None:
            self.alive_at_loss.append(self.left() is not None)
        return super().loss(batch)


def test_what_a_save_leaves_is_freed_before_training_goes_on(tmp_path: Path) -> None:
    method = _LeavesACycle(tmp_path / "out")
    gc.disable()  # only the loop's own collection may free the cycle
    try:
        train_toy(tmp_path, TrainSpec(max_steps=4, save_every=2), method=method)
    finally:
        gc.enable()
    assert method.alive_at_loss == [False, False]  # steps 3 and 4, after the save at step 2


def test_an_interrupted_run_is_not_scored_again_on_its_way_out(tmp_path: Path) -> None:
    control = Control()
    control.interrupt()
    validation = Validation(ToyDataset(4, seed=5), every=10, timesteps=(0,))
    _, result = train_toy(tmp_path, TrainSpec(max_steps=50), control=control, validation=validation)
    assert result.interrupted and result.validation_losses == []


def test_an_interrupt_during_a_save_lets_it_finish_and_stops_right_after(tmp_path: Path) -> None:
    """Interrupt pressed while a periodic save writes: that file is whole, the run stops at that step
    with its final artifact, and running the job again has nothing left to redo before that step."""
    import threading

    control = Control()
    saving, release = threading.Event(), threading.Event()

    class SlowSave(ToyMethod):
        def save(self, step: int, final: bool) -> SavedArtifact:
            if not final and step == 4:
                saving.set()
                assert release.wait(10)
            return super().save(step, final)

    spec = TrainSpec(learn_rate="0.02", max_steps=12, save_every=4)
    result_box: list[TrainResult] = []
    method = SlowSave(tmp_path / "out")
    worker = threading.Thread(
        target=lambda: result_box.append(train_toy(tmp_path, spec, method, control=control)[1])
    )
    worker.start()
    assert saving.wait(30)
    control.interrupt()  # while the step-4 copy is being written
    release.set()
    worker.join(30)
    (result,) = result_box
    assert (result.stopped_reason, result.step) == ("interrupted", 4)
    assert method.saves == [(4, False), (4, True)]
    for name in ("toy-4.safetensors", "toy.safetensors"):
        assert set(load_file(tmp_path / "out" / name)) == set(method.net.state_dict())
    resumed = train_toy(tmp_path, spec, ToyMethod(tmp_path / "out"))[1]
    assert (resumed.start_step, resumed.step) == (4, 12)
