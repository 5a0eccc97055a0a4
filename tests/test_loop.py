"""The training loop on the toy denoiser: learning, schedules, clipping, accumulation, resume, NaNs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from helpers_toy_method import ToyDataset, ToyMethod, csv_losses, same_tensors, train_toy
from safetensors.torch import load_file

from liandan.errors import ConfigError, DatasetError, TrainingStopped
from liandan.jobs import TrainSpec
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.train.loop import TrainResult, default_batch_plan, train
from liandan.train.method import ParamGroup, SavedArtifact


def test_loss_falls_and_artifacts_are_written(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    spec = TrainSpec(learn_rate="0.02", max_steps=60, save_every=30)
    method, result = train_toy(tmp_path, spec, events=events)
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
    _, result = train_toy(tmp_path, spec)
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
        train_toy(tmp_path / clip_mode, spec, method=method)
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

        train_toy(tmp_path / f"{batch_size}x{accumulation}", spec, method=method, batch_plan=plan)
        assert set(method.batch_sizes) == {batch_size}
        return torch.cat([p.detach().reshape(-1) for p in method.net.parameters()])

    accumulated, batched = weights(1, 2), weights(2, 1)
    assert torch.allclose(accumulated, batched, atol=1e-6)
    initial = torch.cat([p.detach().reshape(-1) for p in ToyMethod(tmp_path).net.parameters()])
    assert (accumulated - initial).abs().max() > 1e-3  # both really trained


@pytest.mark.parametrize("version", ["2.13.0+cpu", "2.14.1+cu130"])
def test_torch_compile_on_a_torch_with_wrong_compiled_gradients_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion(version))
    events: list[ProgressEvent] = []
    train_toy(tmp_path, TrainSpec(max_steps=1, save_every=0, torch_compile=True), events=events)
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


def test_a_non_finite_step_is_skipped_and_training_goes_on(tmp_path: Path, status_mode: str) -> None:
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={4})
    result, seen = _train_watching(tmp_path, method, TrainSpec(learn_rate="0.01", max_steps=6, save_every=0))
    messages = [m for m, _ in seen]
    skip = messages.index("non-finite step skipped: the loss at step 4")
    assert same_tensors(seen[skip][1], seen[skip - 1][1])  # the weights of step 3, untouched by the bad batch
    assert not same_tensors(seen[skip + 1][1], seen[skip][1])  # the next batch trained again
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
    assert same_tensors(rollback[1], initial)
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
    assert same_tensors(rollback[1], load_file(str(tmp_path / "out" / "toy-2.safetensors")))
    assert copies == [] and result.rollbacks == 1


def test_large_trainables_without_a_saved_state_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liandan.train import nan_guard

    monkeypatch.setattr(nan_guard, "SNAPSHOT_MAX_BYTES", 0)
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={2, 3, 4})
    with pytest.raises(
        TrainingStopped, match=r"no saved state to roll back to yet \(the first is written at step 50"
    ):
        train_toy(tmp_path, TrainSpec(max_steps=20, save_every=50), method=method)


def test_bad_steps_also_after_the_rollback_stop_with_advice(tmp_path: Path, status_mode: str) -> None:
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls=set(range(2, 9)))
    with pytest.raises(TrainingStopped, match=r"6 steps in a row .* lower the learning rate"):
        train_toy(tmp_path, TrainSpec(max_steps=20, save_every=0), method=method)
    assert method.hook_steps == ([1] if status_mode == "read first" else [1, 2, 2, 2, 2, 2, 2])


def test_nan_policy_stop_stops_at_once(tmp_path: Path, status_mode: str) -> None:
    events: list[ProgressEvent] = []
    method = ToyMethod(tmp_path / "out", nan_on_loss_calls={3})
    with pytest.raises(TrainingStopped, match="at step 3"):
        train_toy(tmp_path, TrainSpec(max_steps=20, nan_policy="stop"), method=method, events=events)
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


def test_dataset_too_small_for_one_step(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="one step needs 4"):
        train_toy(tmp_path, TrainSpec(max_steps=3, batch_size=3, gradient_accumulation=4))


def test_fp16_on_cpu_is_refused(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="bf16"):
        train_toy(tmp_path, TrainSpec(mixed_precision="fp16"))


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
    train_toy(tmp_path, spec)
    losses = csv_losses(tmp_path)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_default_batch_plan_is_seeded_and_drops_the_partial_batch() -> None:
    plan = default_batch_plan(10, 3, seed=1)
    assert plan(0) == plan(0) and plan(0) != plan(1)
    assert [len(b) for b in plan(0)] == [3, 3, 3]
    assert len({i for b in plan(0) for i in b}) == 9


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
        train_toy(tmp_path, TrainSpec(learn_rate="0.01", max_steps=4, save_every=2), method=method)
    assert len(method.hook_steps) <= 2  # stopped at the audit, not after the run


def test_the_audit_waits_for_a_step_that_updates(tmp_path: Path) -> None:
    """A schedule that starts at rate 0 leaves the weights as they are in that step: no false alarm."""
    method = ToyMethod(tmp_path / "out")
    initial = torch.cat([p.detach().reshape(-1) for p in method.net.parameters()])
    _, result = train_toy(
        tmp_path, TrainSpec(learn_rate="0:1, 0.01:4", max_steps=4, save_every=0), method=method
    )
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
        train_toy(tmp_path / str(loss_scale), spec, method=method, dataset=_Weighted(loss_scale),
            batch_plan=lambda epoch: [[0, 1]])  # fmt: skip
        return _flat(method) - before

    once = update(1.0)
    assert once.abs().max() > 1e-3 and torch.allclose(update(2.0), 2 * once, atol=1e-6)


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
        train_toy(tmp_path / str(steps), spec)
        return len(reads)

    assert reads_for(12) - reads_for(6) == 6
