"""The training loop on the toy denoiser: learning, schedules, clipping, accumulation, resume, NaNs."""

from __future__ import annotations

import csv
import gc
import weakref
from pathlib import Path

import pytest
import torch
from helpers_toy_method import ToyDataset, ToyMethod
from safetensors.torch import load_file

from liandan.errors import CheckpointError, ConfigError, DatasetError, TrainingStopped
from liandan.jobs import TrainSpec
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.train.loop import TrainResult, Validation, default_batch_plan, train
from liandan.train.method import ParamGroup, SavedArtifact


def run(
    tmp_path: Path,
    spec: TrainSpec,
    method: ToyMethod | None = None,
    events: list[ProgressEvent] | None = None,
    control: Control | None = None,
    dataset: ToyDataset | None = None,
    **kwargs,
) -> tuple[ToyMethod, TrainResult]:
    method = method or ToyMethod(tmp_path / "out")
    reporter = Reporter(events.append if events is not None else lambda e: None)
    result = train(
        method,
        dataset or ToyDataset(8),
        spec,
        run_dir=tmp_path / "run",
        reporter=reporter,
        control=control or Control(),
        tensorboard=False,
        **kwargs,
    )
    return method, result


def csv_losses(tmp_path: Path) -> list[float]:
    with (tmp_path / "run" / "loss.csv").open(newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_loss_falls_and_artifacts_are_written(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    spec = TrainSpec(learn_rate="0.02", max_steps=60, save_every=30)
    method, result = run(tmp_path, spec, events=events)
    losses = csv_losses(tmp_path)
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert result.stopped_reason == "max_steps" and result.step == 60
    assert method.saves == [(30, False), (60, False), (60, True)]
    assert (tmp_path / "out" / "toy.safetensors").is_file()
    assert method.hook_steps == list(range(1, 61))
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 60
    save_paths = [e.paths for e in events if e.kind == "save"]
    assert save_paths[-1] == (tmp_path / "out" / "toy.safetensors",)


def test_a1111_schedule_sets_rates_and_stops_training_at_its_end(tmp_path: Path) -> None:
    spec = TrainSpec(learn_rate="0.01:3, 0.005:5", max_steps=100, save_every=0)
    _, result = run(tmp_path, spec)
    assert result.stopped_reason == "schedule_end" and result.step == 5
    with (tmp_path / "run" / "loss.csv").open(newline="") as f:
        rates = [row["learn_rate"] for row in csv.DictReader(f)]
    assert rates == ["0.01", "0.01", "0.01", "0.005", "0.005"]


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_clipping_bounds_the_update(tmp_path: Path, mode: str) -> None:
    # Plain SGD with lr 1: the weight change IS the (clipped) gradient.
    def one_step(clip_mode: str) -> torch.Tensor:
        spec = TrainSpec(
            learn_rate="1",
            optimizer="SGD",
            max_steps=1,
            clip_grad_mode=clip_mode,
            clip_grad_value="0.001",
            resume=False,
        )
        method = ToyMethod(tmp_path / "out")
        before = torch.cat([p.detach().clone().reshape(-1) for p in method.net.parameters()])
        run(tmp_path / clip_mode, spec, method=method)
        return before - torch.cat([p.detach().reshape(-1) for p in method.net.parameters()])

    unclipped, clipped = one_step("disabled"), one_step(mode)
    if mode == "value":
        assert unclipped.abs().max() > 0.01
        assert clipped.abs().max() <= 0.001 + 1e-6  # float32 rounding of w - (w - 0.001)
    else:
        assert unclipped.norm() > 0.01
        assert clipped.norm() == pytest.approx(0.001, rel=1e-3)


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(tmp_path: Path) -> None:
    def weights(batch_size: int, accumulation: int) -> torch.Tensor:
        spec = TrainSpec(
            learn_rate="0.01",
            max_steps=4,
            batch_size=batch_size,
            gradient_accumulation=accumulation,
            save_every=0,
        )
        method = ToyMethod(tmp_path / "out", global_rng=False)

        # The same pairs of items per step for both runs: a fixed plan, no shuffle.
        def plan(epoch: int) -> list[list[int]]:
            return [[i] for i in range(8)] if batch_size == 1 else [[i, i + 1] for i in range(0, 8, 2)]

        run(tmp_path / f"{batch_size}x{accumulation}", spec, method=method, batch_plan=plan)
        assert set(method.batch_sizes) == {batch_size}
        return torch.cat([p.detach().reshape(-1) for p in method.net.parameters()])

    accumulated, batched = weights(1, 2), weights(2, 1)
    assert torch.allclose(accumulated, batched, atol=1e-6)
    initial = torch.cat([p.detach().reshape(-1) for p in ToyMethod(tmp_path).net.parameters()])
    assert (accumulated - initial).abs().max() > 1e-3  # both really trained


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
    run(tmp_path / "straight", spec, method=straight, preview_prompt="p")

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
    resumed, result = run(
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
    assert _same(*saved)  # the artifact too (an EMA or schedule-free's average, where it differs)


def test_interrupt_saves_state_and_artifact_and_returns(tmp_path: Path) -> None:
    control = Control()
    control.interrupt()  # already set: the first step ends, then the loop stops
    events: list[ProgressEvent] = []
    method, result = run(tmp_path, TrainSpec(max_steps=50), events=events, control=control)
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
    run(tmp_path, TrainSpec(max_steps=2, save_every=0), method=method, events=events, preview_prompt="p")
    warnings = [e.message for e in events if e.kind == "message"]
    assert any("changes nothing" in m for m in warnings)


@pytest.mark.parametrize("version", ["2.13.0+cpu", "2.14.1+cu130"])
def test_torch_compile_on_a_torch_with_wrong_compiled_gradients_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion(version))
    events: list[ProgressEvent] = []
    run(tmp_path, TrainSpec(max_steps=1, save_every=0, torch_compile=True), events=events)
    warnings = [e.message for e in events if e.kind == "message" and e.extra.get("level") == "warning"]
    wrong = [m for m in warnings if "17% off the eager one; use torch >= 2.14" in m]
    assert len(wrong) == (1 if version.startswith("2.13") else 0)


@pytest.fixture(params=["read first", "pipelined"])
def status_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The NaN guard both ways: the host reads each step's status before stepping (CPU), or, as on a GPU,
    the fused AdamW kernel skips a bad step on the device and the host books it one step late."""
    if request.param == "pipelined":
        from liandan.train import nan_guard

        monkeypatch.setattr(nan_guard, "PIPELINED_DEVICES", ("cpu",))
    return request.param


def _train_watching(tmp_path: Path, method: ToyMethod, spec: TrainSpec) -> tuple[TrainResult, list[tuple]]:
    """Train; return the result and (message, weights at that moment) for each NaN-guard message."""
    seen: list[tuple[str, dict[str, torch.Tensor]]] = []

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "message" and "non-finite" in event.message:
            seen.append((event.message, method.trainable_state()))
        if event.kind == "step":
            seen.append(("step", method.trainable_state()))

    result = train(method, ToyDataset(8), spec, run_dir=tmp_path / "run", reporter=Reporter(on_event),
                   control=Control(), tensorboard=False)  # fmt: skip
    return result, seen


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_step_is_skipped_and_training_goes_on(tmp_path: Path, status_mode: str) -> None:
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={4})
    result, seen = _train_watching(tmp_path, method, TrainSpec(learn_rate="0.01", max_steps=6, save_every=0))
    messages = [m for m, _ in seen]
    skip = messages.index("non-finite step skipped: the loss at step 4")
    assert _same(seen[skip][1], seen[skip - 1][1])  # the weights of step 3, untouched by the bad batch
    assert not _same(seen[skip + 1][1], seen[skip][1])  # the next batch trained again
    assert result.skipped_steps == 1 and result.rollbacks == 0 and result.step == 6
    assert [m for m in messages if m != "step"] == ["non-finite step skipped: the loss at step 4"]
    # pipelined, the hook ran after the skipped step too: the step was taken back when it was read
    hooks = list(range(1, 7)) if status_mode == "read first" else [1, 2, 3, 4, 4, 5, 6]
    assert method.hook_steps == hooks and method.loss_calls == 7


def test_bad_steps_in_a_row_roll_back_to_the_in_memory_snapshot(tmp_path: Path, status_mode: str) -> None:
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={4, 5, 6})
    initial = method.trainable_state()
    result, seen = _train_watching(tmp_path, method, TrainSpec(learn_rate="0.01", max_steps=6, save_every=0))
    (rollback,) = [(m, w) for m, w in seen if "rolled back" in m]
    assert "rolled back to step 0" in rollback[0]  # the snapshot taken at the start
    assert _same(rollback[1], initial)
    assert result.rollbacks == 1 and result.skipped_steps == 2 and result.step == 6


def test_large_trainables_roll_back_from_the_state_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status_mode: str
) -> None:
    """Above the size threshold nothing is copied to memory: the last saved state is the good one."""
    from liandan.train import nan_guard

    monkeypatch.setattr(nan_guard, "SNAPSHOT_MAX_BYTES", 0)
    copies: list[object] = []
    monkeypatch.setattr(nan_guard, "to_cpu_copy", copies.append)
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={4, 5, 6})
    spec = TrainSpec(learn_rate="0.01", max_steps=6, save_every=2, preview_every=0)
    result, seen = _train_watching(tmp_path, method, spec)
    (rollback,) = [(m, w) for m, w in seen if "rolled back" in m]
    assert "rolled back to step 2" in rollback[0]
    assert _same(rollback[1], load_file(str(tmp_path / "out" / "toy-2.safetensors")))
    assert copies == [] and result.rollbacks == 1


def test_large_trainables_without_a_saved_state_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liandan.train import nan_guard

    monkeypatch.setattr(nan_guard, "SNAPSHOT_MAX_BYTES", 0)
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={2, 3, 4})
    with pytest.raises(
        TrainingStopped, match=r"no saved state to roll back to yet \(the first is written at step 50"
    ):
        run(tmp_path, TrainSpec(max_steps=20, save_every=50), method=method)


def test_bad_steps_also_after_the_rollback_stop_with_advice(tmp_path: Path, status_mode: str) -> None:
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls=set(range(2, 9)))
    with pytest.raises(TrainingStopped, match=r"6 steps in a row .* lower the learning rate"):
        run(tmp_path, TrainSpec(max_steps=20, save_every=0), method=method)
    assert method.hook_steps == ([1] if status_mode == "read first" else [1, 2, 2, 2, 2, 2, 2])


def test_nan_policy_stop_stops_at_once(tmp_path: Path, status_mode: str) -> None:
    events: list[ProgressEvent] = []
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={3})
    with pytest.raises(TrainingStopped, match="at step 3"):
        run(tmp_path, TrainSpec(max_steps=20, nan_policy="stop"), method=method, events=events)
    assert events[-1].kind == "error"
    assert [e.step for e in events if e.kind == "step"] == [1, 2]


def test_pipelined_status_trains_exactly_as_reading_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading each step's loss and finiteness one step late (what a GPU run does) changes nothing in a run
    without NaNs: the same weights, the same logged losses at the same steps; and it is one step late."""
    from liandan.train import nan_guard

    spec = TrainSpec(learn_rate="0.01", max_steps=9, batch_size=2, save_every=4, preview_every=0)

    def one_run(folder: str) -> tuple[ToyMethod, list[tuple[int, float | None, int]]]:
        events: list[ProgressEvent] = []
        method = ToyMethod(tmp_path / folder / "out")
        steps: list[tuple[int, float | None, int]] = []

        def on_event(event: ProgressEvent) -> None:
            events.append(event)
            if event.kind == "step":
                steps.append((event.step, event.loss, method.loss_calls))

        torch.manual_seed(0)
        train(method, ToyDataset(8), spec, run_dir=tmp_path / folder / "run", reporter=Reporter(on_event),
              control=Control(), tensorboard=False)  # fmt: skip
        return method, steps

    read_first, read_first_steps = one_run("read-first")
    monkeypatch.setattr(nan_guard, "PIPELINED_DEVICES", ("cpu",))
    pipelined, pipelined_steps = one_run("pipelined")
    assert torch.equal(read_first.net.weight, pipelined.net.weight) and read_first.saves == pipelined.saves
    assert [s[:2] for s in read_first_steps] == [s[:2] for s in pipelined_steps]
    assert [s[0] for s in pipelined_steps] == list(range(1, 10))
    assert [calls for _, _, calls in read_first_steps] == list(range(1, 10))
    # pipelined, step k is booked after step k+1's forward; the first step (the audit's), the saves (4, 8)
    # and the end book at once
    assert [calls for _, _, calls in pipelined_steps] == [1, 3, 4, 4, 6, 7, 8, 8, 9]


def test_early_stop_when_the_epoch_loss_stops_improving(tmp_path: Path) -> None:
    # lr 0, the same data every epoch: no epoch beats the first one.
    class SameEveryEpoch(ToyDataset):
        def set_epoch(self, epoch: int) -> None:
            pass

    spec = TrainSpec(learn_rate="0", max_steps=1000, batch_size=4, early_stop_epochs=2, save_every=0)
    _, result = run(
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
    run(tmp_path, spec)
    method, result = run(tmp_path, spec)
    assert result.stopped_reason == "already_done" and method.loss_calls == 0


def test_dataset_too_small_for_one_step(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="one step needs 4"):
        run(tmp_path, TrainSpec(max_steps=3, batch_size=3, gradient_accumulation=4))


def test_fp16_on_cpu_is_refused(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="bf16"):
        run(tmp_path, TrainSpec(mixed_precision="fp16"))


@pytest.mark.parametrize(
    ("optimizer", "learn_rate"),
    [
        ("AdamW8bit", "0.003"),
        ("AdamW8bitTorchao", "0.003"),
        ("Lion8bit", "0.003"),
        ("Adafactor", "0.003"),
        ("Prodigy", "0.5"),  # a multiplier of its own estimate, which overshoots on this tiny problem
        ("AdamWScheduleFree", "0.003"),
    ],
)
def test_other_optimizers_and_bf16_train(tmp_path: Path, optimizer: str, learn_rate: str) -> None:
    spec = TrainSpec(
        learn_rate=learn_rate, max_steps=30, optimizer=optimizer, mixed_precision="bf16", save_every=0
    )
    run(tmp_path, spec)
    losses = csv_losses(tmp_path)
    assert sum(losses[-5:]) < sum(losses[:5])


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
    method, _ = run(tmp_path, spec, method=Watching(tmp_path / "out"), preview_prompt="p")
    saved = load_file(str(tmp_path / "out" / "toy.safetensors"))
    train_point = method.trainable_state()  # the loop leaves the weights at the training point
    assert not _same(saved, train_point)
    assert _same(method.previewed, saved)  # the final self-test renders what was saved
    # what eval mode makes of the saved training state is exactly the file
    optimizer = build_optimizer("AdamWScheduleFree", method.parameter_groups(), 0.0, 0.0)
    optimizer.load_state_dict(
        torch_load_weights_only(tmp_path / "run" / "state" / "optimizer.pt")["optimizer"]
    )
    method.load_trainable_state(load_file(str(tmp_path / "run" / "state" / "trainable.safetensors")))
    assert _same(method.trainable_state(), train_point)
    set_optimizer_mode(optimizer, training=False)
    assert _same(method.trainable_state(), saved)


def test_default_batch_plan_is_seeded_and_drops_the_partial_batch() -> None:
    plan = default_batch_plan(10, 3, seed=1)
    assert plan(0) == plan(0) and plan(0) != plan(1)
    assert [len(b) for b in plan(0)] == [3, 3, 3]
    assert len({i for b in plan(0) for i in b}) == 9


def test_resuming_with_other_settings_says_what_differs_and_refuses(tmp_path: Path) -> None:
    first = TrainSpec(learn_rate="0.01", max_steps=3, save_every=0)
    run(tmp_path, first)
    longer = first.replace(max_steps=5)  # training on for longer is what resume is for: no question
    with pytest.raises(CheckpointError, match=r"train.learn_rate: '0.01' -> '0.02'.*resume_with_changes"):
        run(tmp_path, longer.replace(learn_rate="0.02"))
    events: list[ProgressEvent] = []
    _, result = run(tmp_path, longer.replace(learn_rate="0.02", resume_with_changes=True), events=events)
    assert result.start_step == 3 and result.step == 5
    assert any("resuming with changed settings: train.learn_rate" in e.message for e in events)
    _, result = run(tmp_path, longer.replace(max_steps=6, learn_rate="0.02"))  # the state now holds 0.02
    assert result.start_step == 5 and result.step == 6


class _UnusedGroup(ToyMethod):
    """Asks to train a tensor its loss never touches (a text-encoder part that never trains)."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.unused = torch.nn.Parameter(torch.zeros(3))

    def parameter_groups(self) -> list[ParamGroup]:
        return [*super().parameter_groups(), ParamGroup("text_encoder", [self.unused])]


class _UndoesItsStep(ToyMethod):
    """Its per-step hook puts the old weights back: gradients flow, nothing trains."""

    def after_optimizer_step(self, step: int) -> None:
        self.load_trainable_state(self.initial)

    def loss(self, batch):
        self.initial = getattr(self, "initial", None) or self.trainable_state()
        return super().loss(batch)


class _SavesNothing(ToyMethod):
    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        return set()


@pytest.mark.parametrize(
    ("method_class", "message"),
    [
        (_UnusedGroup, "parameter group 'text_encoder' received no gradient at step 1"),
        (_UndoesItsStep, "parameter group 'net' did not change in step 1"),
        (_SavesNothing, "toy-2.safetensors lacks the trained parameter group.s. 'net'"),
    ],
)
def test_the_audit_stops_a_run_that_would_train_nothing(
    tmp_path: Path, method_class: type[ToyMethod], message: str
) -> None:
    method = method_class(tmp_path / "out")
    with pytest.raises(TrainingStopped, match=message):
        run(tmp_path, TrainSpec(learn_rate="0.01", max_steps=4, save_every=2), method=method)
    assert len(method.hook_steps) <= 2  # stopped at the audit, not after the run


def test_the_audit_waits_for_a_step_that_updates(tmp_path: Path) -> None:
    """A schedule that starts at rate 0 leaves the weights as they are in that step: no false alarm."""
    method = ToyMethod(tmp_path / "out")
    initial = torch.cat([p.detach().reshape(-1) for p in method.net.parameters()])
    _, result = run(tmp_path, TrainSpec(learn_rate="0:1, 0.01:4", max_steps=4, save_every=0), method=method)
    assert result.step == 4
    first, second = method.weights_after_step[:2]
    assert torch.equal(first, initial) and not torch.equal(second, first)


def _flat(method: ToyMethod) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in method.net.parameters()])


class _Weighted(ToyDataset):
    def __init__(self, loss_scale: float) -> None:
        super().__init__(8)
        self.loss_scale = loss_scale

    def collate(self, items):
        return {**super().collate(items), "loss_scale": self.loss_scale}


def test_a_dataset_weight_scales_the_loss_and_its_gradient(tmp_path: Path) -> None:
    def update(loss_scale: float) -> torch.Tensor:
        method = ToyMethod(tmp_path / "out", global_rng=False)
        before = _flat(method)
        spec = TrainSpec(learn_rate="1", optimizer="SGD", max_steps=1, save_every=0)
        run(tmp_path / str(loss_scale), spec, method=method, dataset=_Weighted(loss_scale),
            batch_plan=lambda epoch: [[0, 1]])  # fmt: skip
        return _flat(method) - before

    once = update(1.0)
    assert once.abs().max() > 1e-3 and torch.allclose(update(2.0), 2 * once, atol=1e-6)


def test_validation_scores_a_held_out_set_at_fixed_noise(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    spec = TrainSpec(learn_rate="0.02", max_steps=30, save_every=0)
    validation = Validation(ToyDataset(4, seed=5), every=10, timesteps=(0, 500, 999))
    _, result = run(tmp_path / "v", spec, events=events, validation=validation)
    assert [step for step, _ in result.validation_losses] == [10, 20, 30]
    losses = [loss for _, loss in result.validation_losses]
    assert losses[-1] < losses[0]
    assert [e.extra["validation_loss"] for e in events if "validation_loss" in e.extra] == losses
    run(tmp_path / "plain", spec)  # scoring leaves the training RNG alone: the same run without it
    assert csv_losses(tmp_path / "v") == csv_losses(tmp_path / "plain")
    frozen = Validation(ToyDataset(4, seed=5), every=1, timesteps=(0, 500, 999))
    _, result = run(tmp_path / "frozen", spec.replace(learn_rate="0", max_steps=3), validation=frozen)
    assert len({loss for _, loss in result.validation_losses}) == 1  # same weights, same noise: same score


def test_a_step_reads_from_the_device_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor -> Python conversion would be a host-device sync on a GPU: a plain step has one (the
    loss and the finiteness flags together). SGD: Adam reads its step counter, which lives on the CPU."""
    reads: list[str] = []
    for name in ("tolist", "item", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(steps: int) -> int:
        reads.clear()
        spec = TrainSpec(learn_rate="0.01", optimizer="SGD", max_steps=steps, save_every=0, preview_every=0)
        run(tmp_path / str(steps), spec)
        return len(reads)

    assert reads_for(12) - reads_for(6) == 6


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
        run(tmp_path, TrainSpec(max_steps=4, save_every=2), method=method)
    finally:
        gc.enable()
    assert method.alive_at_loss == [False, False]  # steps 3 and 4, after the save at step 2


def test_an_interrupted_run_is_not_scored_again_on_its_way_out(tmp_path: Path) -> None:
    control = Control()
    control.interrupt()
    validation = Validation(ToyDataset(4, seed=5), every=10, timesteps=(0,))
    _, result = run(tmp_path, TrainSpec(max_steps=50), control=control, validation=validation)
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
        target=lambda: result_box.append(run(tmp_path, spec, method, control=control)[1])
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
    resumed = run(tmp_path, spec, ToyMethod(tmp_path / "out"))[1]
    assert (resumed.start_step, resumed.step) == (4, 12)
