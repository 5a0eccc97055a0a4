"""The one training loop every method uses (Accelerate; nanoGPT's order, one screen in `train`).

Per optimizer step: set lr -> micro-steps under `accelerator.accumulate` (one forward/backward each) ->
average gradients over ranks (methods with gradient_sync "all_reduce"; DDP does it for "prepare") -> NaN
guard (one device read with the loss) -> audit (first updating step) -> clip (unscaled) -> step -> zero grad
-> method hook -> EMA update -> log -> save/validate/preview when due -> stop? On a GPU with the fused AdamW
the NaN guard and the log read a step's values during the next one (train/nan_guard.py: "pipelined"), so the
host never waits for the device in the hot loop; side work books the step in flight first. Saves come after
the step because an artifact is named by the steps it holds. Memory is released after each side phase (save,
preview, validation), so the training step gets back what they used. Saves, previews and validation see the
"eval weights" (`_Run.eval_weights`: the EMA of train/ema.py, or a schedule-free optimizer's average); the
full state holds the training weights. With `fused_backward` (train/fused_backward.py) each tensor steps
inside backward: the loss is checked before backward instead, and clip and step have nothing left to do.

Data: a map-style dataset with `collate(items)` and `set_epoch(epoch)` whose per-item randomness derives
from (seed, epoch, index), and a `batch_plan(epoch) -> list[list[int]]`; data workers (train/batches.py)
also need `item(index, epoch)`, `needs_vae` and `drop_vae()`. The default plan is a shuffle seeded
by (seed, epoch) cut into `batch_size` chunks, the last partial batch dropped (A1111's DataLoader uses
`shuffle=True, drop_last=True`). An optimizer step takes `gradient_accumulation x processes` batches of
the plan (rank r takes its own consecutive run); batches left over at the end of an epoch are skipped, as
A1111 does for gradient accumulation. Resume restarts at the exact batch of the plan. A batch may carry
`loss_scale` (its dataset's weight, see liandan/data/dataset.py): the loop multiplies the method's loss by it.

Validation (optional): a held-out dataset scored every `Validation.every` steps and at the end (unless
interrupted), without gradients and with the trainable modules in eval mode, each item at fixed timesteps
with fixed noise (batch keys "timesteps" and "noise", which a method's loss must use when present).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liandan.errors import CheckpointError, ConfigError, DatasetError, TrainingStopped
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.train import distributed
from liandan.train.audit import TrainingAudit
from liandan.train.batches import MicroBatches, batch_keys, worker_count
from liandan.train.checkpointing import (
    LoopPosition,
    capture_rng,
    find_state,
    load_state,
    preserved_rng,
    restore_rng,
    save_state,
    spec_differences,
)
from liandan.train.diffusion_loss import compile_warning
from liandan.train.ema import WeightAverage
from liandan.train.fused_backward import FusedOptimizer
from liandan.train.lr_schedule import clip_value_schedule, learn_rate_schedule
from liandan.train.nan_guard import (
    SKIPS_BEFORE_ROLLBACK,
    SNAPSHOT_EVERY,
    NanGuard,
    StepStatus,
    found_inf,
    pipelined_status,
    snapshot_fits_in_memory,
    status_values,
    step_status,
    step_unless_found_inf,
)
from liandan.train.optimizers import build_optimizer, set_learning_rate, set_optimizer_mode
from liandan.train.self_test import NO_CHANGE_WARNING, run_self_test, save_preview
from liandan.train.training_log import LossCsv, TensorBoardLog
from liandan.train.validation import Validation, validation_loss

if TYPE_CHECKING:
    from accelerate import Accelerator

    from liandan.jobs import TrainSpec
    from liandan.train.method import SavedArtifact, TrainingMethod

log = logging.getLogger(__name__)

BatchPlan = Callable[[int], list[list[int]]]
GRADIENT_SYNCS = ("all_reduce", "prepare")


def release_memory() -> None:
    """Between phases (caching, training, previews, saving): collect what the last phase left and hand
    the CUDA allocator's cached blocks back, so the next phase (or the WebUI beside us) can use them."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class TrainResult:
    """`stopped_reason`: "max_steps" | "schedule_end" | "interrupted" | "early_stop" | "already_done"."""

    step: int
    start_step: int
    stopped_reason: str
    message: str
    last_loss: float | None = None
    artifacts: list[SavedArtifact] = field(default_factory=list)
    rollbacks: int = 0
    skipped_steps: int = 0  # non-finite steps the NaN guard skipped
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)

    @property
    def interrupted(self) -> bool:
        return self.stopped_reason == "interrupted"


def default_batch_plan(num_items: int, batch_size: int, seed: int) -> BatchPlan:
    def plan(epoch: int) -> list[list[int]]:
        order = np.random.default_rng([seed, epoch]).permutation(num_items).tolist()
        return [order[i : i + batch_size] for i in range(0, num_items - batch_size + 1, batch_size)]

    return plan


def make_accelerator(spec: TrainSpec) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if spec.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision = 'fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'no'")
    # An earlier job in this process (the WebUI runs many) froze the global state with its own settings.
    AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=spec.mixed_precision,
        gradient_accumulation_steps=spec.gradient_accumulation,
        cpu=not torch.cuda.is_available(),
    )


def _check_setup(accelerator: Accelerator, spec: TrainSpec) -> None:
    if accelerator.gradient_accumulation_steps != spec.gradient_accumulation:
        raise ConfigError(
            f"the Accelerator accumulates {accelerator.gradient_accumulation_steps} steps but the job "
            f"asks for gradient_accumulation = {spec.gradient_accumulation}"
        )
    if spec.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("mixed_precision = 'fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'no'")


class _Run:
    """The loop's state and side work (saves, previews, logs); `train` below is the loop itself."""

    def __init__(
        self,
        method: TrainingMethod,
        spec: TrainSpec,
        accelerator: Accelerator,
        run_dir: Path,
        reporter: Reporter,
        control: Control,
        loss_csv_name: str,
        preview_prompt: str | None,
        preview_seed: int,
        self_test: bool,
        tensorboard: bool,
        job_spec: dict[str, Any],
        validation: Validation | None,
    ) -> None:
        self.method, self.spec, self.accelerator, self.run_dir = method, spec, accelerator, run_dir
        self.reporter, self.control, self.job_spec = reporter, control, job_spec
        self.validation = validation
        self.validation_losses: list[tuple[int, float]] = []
        self.self_tested_step = -1
        self.is_main = accelerator.is_main_process
        self.preview_prompt, self.preview_seed, self.self_test = preview_prompt, preview_seed, self_test
        self.position = LoopPosition(
            method_kind=method.kind, method_name=method.name, world_size=accelerator.num_processes
        )
        groups = method.parameter_groups()
        self.audit = TrainingAudit(groups)
        self.fused: FusedOptimizer | None = None
        if spec.fused_backward:
            if accelerator.num_processes > 1:
                raise ConfigError(
                    "fused_backward needs one process: its steps run before gradients are averaged over "
                    f"the {accelerator.num_processes} processes; turn it off or run on one GPU"
                )
            self.fused = FusedOptimizer(spec.optimizer, groups, spec.weight_decay, self.say)
        optimizer = self.fused or build_optimizer(spec.optimizer, groups, 0.0, spec.weight_decay, self.say)
        self.sync_targets = self._prepare(optimizer)
        # the optimizer's own tensors: FSDP replaces the method's parameters by flat shards
        self.params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.ema = (
            WeightAverage(self.params, spec.ema_decay, spec.ema_update_every) if spec.ema_decay else None
        )
        attach = getattr(method, "attach_optimizer", None)  # optional hook, see TrainingMethod
        if attach is not None:
            self.position.step = attach(self.optimizer)
        # after attach: a `.optim` sidecar holds a schedule-free state in eval mode, as it was saved
        set_optimizer_mode(self.optimizer, training=True)
        self.guard = NanGuard(spec.nan_policy, spec.mixed_precision, snapshot_fits_in_memory(self.params))
        self.pipelined = pipelined_status(
            self.optimizer, accelerator.device, accelerator.scaler, spec.fused_backward
        )
        self.pending: StepStatus | None = None  # a pipelined step's status, not read yet
        self.votes = distributed.LateVotes(accelerator.device)
        self.last_loss: float | None = None
        self.state_on_disk = False  # a state this run wrote or resumed from: what a large rollback loads
        self.csv = LossCsv(run_dir / loss_csv_name) if self.is_main else None
        self.tensorboard = TensorBoardLog(run_dir / "tensorboard") if self.is_main and tensorboard else None
        self.artifacts: list[SavedArtifact] = []
        self.batches: MicroBatches | None = None  # started by the loop, stopped however it ends

    def _prepare(self, optimizer: Any) -> list[torch.nn.Module]:
        """Prepare the optimizer (and, for gradient_sync "prepare", the modules with it: accelerate pairs
        them for FSDP/DeepSpeed); returns the wrapped modules whose no_sync accumulation needs. A fused
        backward's optimizers (one process, no grad scaler) stay as they are."""
        sync = self.method.gradient_sync
        if sync not in GRADIENT_SYNCS:
            raise ConfigError(f"{self.method.kind}: gradient_sync {sync!r}; expected one of {GRADIENT_SYNCS}")
        if sync == "all_reduce":
            self.optimizer = optimizer if self.fused else self.accelerator.prepare(optimizer)
            return []
        modules = self.method.trainable_modules()
        use_prepared = getattr(self.method, "use_prepared_modules", None)
        if not modules or use_prepared is None:
            raise ConfigError(
                f"{self.method.kind}: gradient_sync 'prepare' needs trainable_modules() and "
                "use_prepared_modules(modules)"
            )
        if self.fused:
            prepared = self.accelerator.prepare(*modules)  # one module comes back bare, several as a tuple
            wrapped = list(prepared) if isinstance(prepared, tuple) else [prepared]
            self.optimizer = optimizer
        else:
            *wrapped, self.optimizer = self.accelerator.prepare(*modules, optimizer)
        use_prepared(wrapped)
        kind = str(self.accelerator.distributed_type)
        if "FSDP" in kind or "DEEPSPEED" in kind:
            # the state files hold what rank 0 sees, which for a sharded optimizer is its own shard
            log.warning("%s shards the optimizer: this run's saved state cannot be resumed exactly", kind)
        return wrapped

    @contextlib.contextmanager
    def accumulate(self) -> Iterator[None]:
        """One micro-step: accelerate counts it and, before the last of a step, DDP skips its all-reduce
        (`no_sync` on every wrapped module)."""
        targets = self.sync_targets or [torch.nn.Identity()]  # accelerate wants a module to no_sync on
        with self.accelerator.accumulate(targets[0]), contextlib.ExitStack() as stack:
            if not self.accelerator.sync_gradients:
                for module in targets[1:]:
                    stack.enter_context(self.accelerator.no_sync(module))
            yield

    def emit(self, kind: str, **fields: Any) -> None:
        if self.is_main:
            self.reporter(
                ProgressEvent(
                    kind, job=self.method.name, step=self.position.step, total=self.spec.max_steps, **fields
                )
            )

    def say(self, message: str) -> None:
        self.emit("message", message=message)

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        """The weights to save, preview and score: the EMA, or a schedule-free optimizer's average; the
        training weights are back afterwards."""
        set_optimizer_mode(self.optimizer, training=False)
        try:
            with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
                yield
        finally:
            set_optimizer_mode(self.optimizer, training=True)

    def optimizer_state(self) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
        }

    def resume(self) -> bool:
        folder = find_state(self.run_dir) if self.spec.resume else None
        if folder is None:
            return False
        state = load_state(folder)
        saved = state.position
        if (saved.method_kind, saved.method_name) != (self.method.kind, self.method.name):
            raise CheckpointError(
                f"{folder} holds the state of {saved.method_kind} {saved.method_name!r}, not of "
                f"{self.method.kind} {self.method.name!r}; use another log folder or set resume = false"
            )
        self._check_same_job(folder, state.job_spec)
        self._load_good_state(state.trainable, state.optimizer_state)
        self.state_on_disk = True
        rank = self.accelerator.process_index
        if saved.world_size != self.accelerator.num_processes:
            log.warning(
                "resuming a %d-process run on %d processes: not bit-exact",
                saved.world_size,
                self.accelerator.num_processes,
            )
        restore_rng(state.rng_per_process[rank % len(state.rng_per_process)])
        self.position = saved
        self.position.world_size = self.accelerator.num_processes
        if self.csv is not None:
            self.csv.drop_rows_after(saved.step)
        return True

    def _check_same_job(self, folder: Path, saved: dict[str, Any] | None) -> None:
        changes = spec_differences(saved, self.job_spec) if saved is not None else []
        if not changes:
            return
        listed = "; ".join(changes)
        if not self.spec.resume_with_changes:
            raise CheckpointError(
                f"{folder} holds a run with other settings ({listed}). To continue it with the new "
                "settings set train.resume_with_changes = true (CLI: --set train.resume_with_changes=true); "
                "to start over set resume = false or use another log folder"
            )
        self.emit("message", message=f"resuming with changed settings: {listed}", extra={"level": "warning"})

    def _load_good_state(self, trainable: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        self.method.load_trainable_state(trainable)
        self.optimizer.load_state_dict(optimizer_state["optimizer"])
        if self.accelerator.scaler is not None and optimizer_state["scaler"]:
            self.accelerator.scaler.load_state_dict(optimizer_state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(optimizer_state.get("ema"))

    def remember_good_state(self) -> None:
        if self.guard.in_memory:  # large trainables roll back from the state on disk instead
            self.guard.remember(self.position.step, self.method.trainable_state(), self.optimizer_state())

    def roll_back(self, learn_rate: float) -> int:
        """The NaN guard's rollback: restore the last good weights and optimizer state; returns their step."""
        snapshot = self.guard.snapshot
        if snapshot is not None:
            self._load_good_state(snapshot.trainable, snapshot.optimizer_state)
            return snapshot.step
        folder = find_state(self.run_dir) if self.state_on_disk else None
        if folder is None:
            every = self.spec.save_every
            first = f"the first is written at step {every}" if every else "only the end writes one"
            raise self.guard.no_state_to_roll_back_to(self.position.step, first, learn_rate)
        state = load_state(folder)
        self._load_good_state(state.trainable, state.optimizer_state)
        return state.position.step

    def save(self, final: bool) -> None:
        """Full state + artifact (+ self-test), and the audit of what was written. Every rank takes part;
        only the main process writes."""
        rng = distributed.gather_objects(capture_rng())
        self.remember_good_state()
        problem = None
        if self.is_main:
            # reading the files back may build modules (a hypernetwork's), whose init draws random numbers
            with preserved_rng():
                trainable = self.method.trainable_state()
                save_state(self.run_dir, self.position, trainable, self.optimizer_state(), rng, self.job_spec)
                del trainable
                with self.eval_weights():
                    artifact = self.method.save(self.position.step, final)
                saved_groups = self.method.saved_groups(artifact)
            self.artifacts.append(artifact)
            self.emit("save", paths=tuple(artifact.paths), message="final" if final else "checkpoint")
            where = f"the saved {artifact.paths[0].name}" if artifact.paths else "the save"
            problem = self.audit.check_saved(saved_groups, where)
        self.state_on_disk = True
        # the vote is also the barrier: no rank reads the new state before rank 0 has written it
        (bad,) = distributed.any_rank(problem is not None, device=self.accelerator.device)
        release_memory()
        if bad:
            raise TrainingStopped(problem or "the saved artifact does not hold the trained parameter groups")

    def preview(self, after_save: bool, periodic: bool) -> None:
        """The self-test after a save and/or the periodic preview (one render of "with" serves both)."""
        step = self.position.step
        self_test = after_save and self.self_test and self.self_tested_step != step
        if self.is_main and self.preview_prompt is not None and (self_test or periodic):
            images = self.run_dir / "images"
            with preserved_rng(), self.eval_weights():
                image = None
                if self_test:
                    self.self_tested_step = step
                    result = run_self_test(self.method, self.preview_prompt, self.preview_seed, images, step)
                    image = result.with_artifact
                    self.emit("preview", paths=(result.path,), message="self-test")
                    if result.identical:
                        self.emit(
                            "message", message=NO_CHANGE_WARNING.format(step=step), extra={"level": "warning"}
                        )
                if periodic:
                    path = save_preview(
                        self.method, self.preview_prompt, self.preview_seed, images, step, image
                    )
                    self.emit("preview", paths=(path,))
            for module in self.method.trainable_modules():
                module.train()  # a preview may have switched them to eval
            release_memory()
        distributed.barrier()

    def validate(self) -> None:
        """Score the validation set (once per step) and report it."""
        validation = self.validation
        if validation is None or any(step == self.position.step for step, _ in self.validation_losses):
            return
        with self.eval_weights():
            loss = validation_loss(validation, self.method, self.accelerator)
        self.validation_losses.append((self.position.step, loss))
        if self.tensorboard is not None:
            self.tensorboard.add_validation(self.position.step, loss)
        self.emit(
            "message",
            message=f"validation loss {loss:.5f} at step {self.position.step}",
            extra={"validation_loss": loss},
        )
        release_memory()

    def book(self, status: StepStatus, counted: bool) -> str:
        """Account for a step once its status is read: "good" (logged), or what `book_bad` says."""
        loss, finite = status.read()
        if finite:
            self.book_good(loss, status)
            return "good"
        return self.book_bad(loss, status, counted)

    def book_good(self, loss: float, status: StepStatus) -> None:
        pos = self.position
        self.guard.good_step()
        self.last_loss = loss
        pos.epoch_loss_sum += loss
        pos.epoch_loss_count += 1
        self.log_step(loss, status.learn_rate, status.epoch_step)

    def book_bad(self, loss: float, status: StepStatus, counted: bool) -> str:
        """A non-finite step is skipped ("skip") or rolls the weights back ("rollback") as the guard says,
        which may also stop training. `counted`: the loop counted the step already (pipelined: the device
        skipped it), so it is taken back. The caller drops the gradients of a step it has not taken."""
        pos = self.position
        if counted:
            pos.step -= 1
        what = "a gradient" if math.isfinite(loss) else "the loss"
        verdict = self.guard.bad_step(pos.step, what, status.learn_rate)
        if verdict == "rollback":
            good = self.roll_back(status.learn_rate)
            note = (
                f"{SKIPS_BEFORE_ROLLBACK} non-finite steps in a row: weights and optimizer state "
                f"rolled back to step {good}"
            )
        else:
            note = f"non-finite step skipped: {what} at step {pos.step + 1}"
        self.emit("message", message=note, extra={"level": "warning"})
        return verdict

    def periodic_work_due(self, step: int) -> bool:
        validate_every = self.validation.every if self.validation is not None else 0
        periods = (self.spec.save_every, self.spec.preview_every, SNAPSHOT_EVERY, validate_every)
        return any(every > 0 and step % every == 0 for every in periods)

    def flush(self) -> None:
        """Book the pipelined step still in flight: before anything that depends on the step count or the
        loss (saves, previews, the epoch's end, stopping)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.book(pending, counted=True)

    def log_step(self, loss: float, learn_rate: float, epoch_step: int) -> None:
        step = self.position.step
        if step % self.spec.log_every == 0:
            if self.csv is not None:
                self.csv.append(step, self.position.epoch, epoch_step, loss, learn_rate)
            if self.tensorboard is not None:
                self.tensorboard.add(step, loss, learn_rate)
        self.emit("step", loss=loss, learn_rate=learn_rate)

    def end_epoch(self) -> str | None:
        """Early-stop bookkeeping; returns a stop message when the epoch loss stopped improving."""
        pos, patience = self.position, self.spec.early_stop_epochs
        message = None
        if pos.epoch_loss_count:
            mean = pos.epoch_loss_sum / pos.epoch_loss_count
            if pos.best_epoch_loss is None or mean < pos.best_epoch_loss:
                pos.best_epoch_loss, pos.epochs_without_improvement = mean, 0
            else:
                pos.epochs_without_improvement += 1
            if patience and pos.epochs_without_improvement >= patience:
                message = (
                    f"early stop after epoch {pos.epoch}: the mean epoch loss has not improved for "
                    f"{patience} epoch(s) (best {pos.best_epoch_loss:.7f}, last {mean:.7f})"
                )
        pos.epoch, pos.batch_index, pos.epoch_loss_sum, pos.epoch_loss_count = pos.epoch + 1, 0, 0.0, 0
        return message


def train(
    method: TrainingMethod,
    dataset: Any,
    spec: TrainSpec,
    *,
    run_dir: Path,
    reporter: Reporter,
    control: Control,
    batch_plan: BatchPlan | None = None,
    loss_csv_name: str = "loss.csv",
    preview_prompt: str | None = None,
    preview_seed: int = 0,
    self_test: bool = True,
    accelerator: Accelerator | None = None,
    tensorboard: bool = True,
    job_spec: dict[str, Any] | None = None,
    validation: Validation | None = None,
) -> TrainResult:
    """Train `method` on `dataset` as `spec` says; results and state go under `run_dir`.

    The method's modules must already sit on `accelerator.device` (batches are moved there); under several
    processes every rank starts from rank 0's weights, and gradients meet as the method's `gradient_sync`
    says (see liandan/train/method.py). `preview_prompt` None turns previews and the self-test off.
    `job_spec` (the whole job as a dict; default: the train spec) is stored with the state, and resuming
    with other settings is refused unless `spec.resume_with_changes`. Raises TrainingStopped (NaN guard,
    audit) and the typed errors of bad settings; an "error" event is emitted before any exception leaves.
    """
    from accelerate.utils import set_seed

    accelerator = accelerator or make_accelerator(spec)
    _check_setup(accelerator, spec)
    lr_schedule = learn_rate_schedule(
        spec.learn_rate, spec.lr_scheduler, spec.max_steps, spec.lr_warmup_steps
    )
    clip_values = (
        None
        if spec.clip_grad_mode == "disabled"
        else clip_value_schedule(spec.clip_grad_value, spec.max_steps)
    )
    # the loop and its batch iterator (a little ahead) both read an epoch's plan
    plan_for = functools.lru_cache(maxsize=2)(
        batch_plan or default_batch_plan(len(dataset), spec.batch_size, spec.seed)
    )
    set_seed(spec.seed, device_specific=True)
    for module in method.trainable_modules():
        module.train()
        if spec.gradient_checkpointing:
            _enable_gradient_checkpointing(module)
    run = _Run(
        method,
        spec,
        accelerator,
        run_dir,
        reporter,
        control,
        loss_csv_name,
        preview_prompt,
        preview_seed,
        self_test,
        tensorboard,
        job_spec if job_spec is not None else {"train": spec.to_dict()},
        validation,
    )
    try:
        return _train_loop(run, dataset, plan_for, lr_schedule.rate_at, clip_values)
    except Exception as e:
        run.emit("error", message=str(e))
        raise
    finally:
        if run.batches is not None:
            run.batches.close()
        if run.fused is not None:
            run.fused.close()
        if run.tensorboard is not None:
            run.tensorboard.close()


def _train_loop(
    run: _Run, dataset: Any, plan_for: BatchPlan, rate_at: Callable[[int], float | None], clip_values: Any
) -> TrainResult:
    spec, accelerator, method = run.spec, run.accelerator, run.method
    resumed = run.resume()
    all_reduce = method.gradient_sync == "all_reduce"
    if all_reduce:  # DDP broadcast rank 0's weights itself when it wrapped the modules
        distributed.broadcast_parameters(run.params)
    if run.ema is not None and not resumed:
        run.ema.restart()
    pos = run.position
    start_step, accum = pos.step, spec.gradient_accumulation
    per_step = accum * accelerator.num_processes
    rank_offset = accelerator.process_index * accum
    accelerator.step = 0  # accelerate's micro-step counter: a reused Accelerator may hold an old count
    if rate_at(pos.step) is None:
        message = f"nothing to do: already trained to step {pos.step}"
        run.emit("done", message=message)
        return TrainResult(pos.step, start_step, "already_done", message)
    run.remember_good_state()
    run.emit("start", message=f"resumed at step {pos.step}" if resumed else "started")
    compile_note = compile_warning() if spec.torch_compile else None
    if compile_note:
        run.emit("message", message=compile_note, extra={"level": "warning"})
    workers = worker_count(spec.data_workers, accelerator.device, dataset)
    keys = batch_keys(plan_for, pos.epoch, pos.batch_index, per_step, rank_offset, accum)
    run.batches = batches = MicroBatches(dataset, keys, workers, accelerator.device.type == "cuda")
    if workers:
        run.say(f"{workers} worker process(es) build the batches")
    reason, message = "", ""
    while not reason:
        dataset.set_epoch(pos.epoch)
        plan = plan_for(pos.epoch)
        if len(plan) < per_step:
            raise DatasetError(
                f"an epoch has {len(plan)} batch(es) but one step needs {per_step} "
                f"(gradient_accumulation {accum} x {accelerator.num_processes} process(es)): "
                "add images or repeats, or lower batch_size / gradient_accumulation"
            )
        while pos.batch_index + per_step <= len(plan):
            lr = rate_at(pos.step)  # --- set lr
            if lr is None:
                run.flush()  # a skipped last step is taken back: one more to train
                lr = rate_at(pos.step)
            if lr is None:
                reason = "max_steps" if pos.step >= spec.max_steps else "schedule_end"
                break
            set_learning_rate(run.optimizer, lr)
            audit_now = run.audit.pending and lr > 0
            if run.fused is not None:  # it steps inside backward: what the step needs is set before
                run.fused.clip_value = clip_values.value_at(pos.step) if clip_values is not None else None
                run.fused.observe = run.audit.observe if audit_now else None
            step_loss = torch.zeros((), device=accelerator.device)
            for _ in range(accum):  # --- micro-steps: one forward/backward each
                batch = distributed.to_device(next(batches), accelerator.device)
                with run.accumulate():
                    with accelerator.autocast():
                        loss = method.loss(batch) * batch.get("loss_scale", 1.0)
                    if run.fused is None or math.isfinite(step_status(loss, [], False)[0]):
                        accelerator.backward(loss)  # a fused one steps: only with a finite loss
                step_loss += loss.detach().float() / accum
            if not accelerator.sync_gradients:
                raise RuntimeError("accelerate's accumulation counter is out of step with the loop")
            if all_reduce:
                distributed.average_gradients(run.params)
            step_loss = distributed.mean_over_ranks(step_loss)
            # fp16's grad scaler checks the gradients itself (and skips that step)
            values = status_values(step_loss, run.params, accelerator.scaler is None)
            status = StepStatus.send(lr, pos.batch_index // per_step, values)
            pipelined = run.pipelined and not audit_now  # the audit reads the step it checks
            pending, run.pending = run.pending, None  # --- NaN guard (also the step before's, pipelined)
            rolled_back = pending is not None and run.book(pending, counted=True) == "rollback"
            loss_value, finite = (math.nan, True) if pipelined else status.read()
            if not finite:
                run.book_bad(loss_value, status, counted=False)
            if rolled_back or not finite:  # consume the batch without a step (after a rollback, its
                # gradients are of the weights rolled back from)
                run.optimizer.zero_grad(set_to_none=True)
                pos.batch_index += per_step
                continue
            if audit_now:  # --- audit: every group asked for has a gradient ...
                run.audit.before_step(pos.step, observed=run.fused is not None)
            if clip_values is not None and run.fused is None:  # --- clip (accelerate unscales fp16 first)
                clip = clip_values.value_at(pos.step)
                if spec.clip_grad_mode == "norm":
                    accelerator.clip_grad_norm_(run.params, clip)
                else:
                    accelerator.clip_grad_value_(run.params, clip)
            if pipelined:  # --- step (the kernel skips a non-finite one), zero grad, hook
                step_unless_found_inf(run.optimizer, found_inf(values))
            else:
                run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            pos.step += 1
            pos.batch_index += per_step
            method.after_optimizer_step(pos.step)
            if run.ema is not None:
                run.ema.update(pos.step)
            if audit_now and not accelerator.optimizer_step_was_skipped:
                run.audit.after_step(pos.step, lr)  # --- ... and changed (after the hook, which may undo)
            if pipelined:  # --- log (booked at the next step, or before side work that needs it)
                run.pending = status
            else:
                run.book_good(loss_value, status)
            control = run.control
            requests = run.votes.exchange(  # with several processes, the vote of the step before
                control.take_save_request(), control.take_preview_request(), control.interrupted
            )
            save_now, preview_now, stop_now = requests
            trained = pos.step
            if run.pending is not None and (any(requests) or run.periodic_work_due(pos.step)):
                run.flush()  # side work reports the booked count and loss; a bad step is taken back
            periodic = pos.step == trained  # a step taken back left nothing new to save or preview
            save_due = save_now or (periodic and spec.save_every > 0 and pos.step % spec.save_every == 0)
            preview_due = preview_now or (
                periodic and spec.preview_every > 0 and pos.step % spec.preview_every == 0
            )
            if stop_now:  # --- stop? (an interrupt saves the final artifact below)
                reason, message = "interrupted", f"interrupted at step {pos.step}"
                break
            if save_due:
                run.save(final=False)
                (stop_now,) = distributed.any_rank(control.interrupted, device=accelerator.device)
                if stop_now:  # Interrupt pressed while saving: stop here, not one step later
                    reason, message = "interrupted", f"interrupted at step {pos.step}"
                    break
            elif periodic and pos.step % SNAPSHOT_EVERY == 0:
                run.remember_good_state()
            if save_due or preview_due:
                run.preview(after_save=save_due, periodic=preview_due)
            if periodic and run.validation is not None and pos.step % run.validation.every == 0:
                run.validate()
        else:
            run.flush()  # the epoch's loss holds its last step
            message = run.end_epoch() or ""
            reason = "early_stop" if message else ""
    batches.close()  # the workers and their batches are gone before the final save
    run.votes.drain()
    message = message or (
        f"finished: {spec.max_steps} steps"
        if reason == "max_steps"
        else f"the lr schedule ended at step {pos.step}"
    )
    run.save(final=True)
    run.preview(after_save=True, periodic=False)
    if reason != "interrupted":  # an interrupt asks to stop soon
        run.validate()
    run.emit("done", message=message, loss=run.last_loss)
    guard = run.guard
    return TrainResult(pos.step, start_step, reason, message, run.last_loss, run.artifacts, guard.rollbacks,
                       guard.skipped, run.validation_losses)  # fmt: skip


def _enable_gradient_checkpointing(module: torch.nn.Module) -> None:
    for name in ("enable_gradient_checkpointing", "gradient_checkpointing_enable"):  # diffusers, transformers
        if hasattr(module, name):
            getattr(module, name)()
            return
    # small trainables (embedding vectors, a hypernetwork) have none: their methods checkpoint the frozen UNet
    log.debug("%s has no gradient checkpointing switch of its own", type(module).__name__)
