"""A training run's state and side work, which the loop (train/loop.py) drives step by step.

`TrainingRun` prepares the optimizer (Accelerate; the fused backward's own), resumes from a saved state
(refusing another job's, or changed settings unless asked), books each step once its status is read (the
loss log, the NaN guard's skip or rollback, pipelined on a GPU: `flush` books the step in flight), saves the
full state and the artifact with its audit, renders previews and the self-test and scores validation, all
with the "eval weights" (`eval_weights`: the EMA, or a schedule-free optimizer's average), and keeps the
early-stop count at each epoch's end. Memory is released after each side phase (`release_memory`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liandan.errors import CheckpointError, ConfigError, TrainingStopped
from liandan.progress import Control, ProgressEvent, Reporter
from liandan.train import distributed
from liandan.train.audit import TrainingAudit
from liandan.train.batches import MicroBatches
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
from liandan.train.ema import WeightAverage
from liandan.train.fused_backward import FusedOptimizer
from liandan.train.nan_guard import (
    SKIPS_BEFORE_ROLLBACK,
    SNAPSHOT_EVERY,
    NanGuard,
    StepStatus,
    pipelined_status,
    snapshot_fits_in_memory,
)
from liandan.train.optimizers import build_optimizer, set_optimizer_mode
from liandan.train.self_test import NO_CHANGE_WARNING, run_self_test, save_preview
from liandan.train.training_log import LossCsv, TensorBoardLog
from liandan.train.validation import Validation, validation_loss

if TYPE_CHECKING:
    from accelerate import Accelerator

    from liandan.jobs import TrainSpec
    from liandan.train.method import SavedArtifact, TrainingMethod

log = logging.getLogger(__name__)

GRADIENT_SYNCS = ("all_reduce", "prepare")


def release_memory() -> None:
    """Between phases (caching, training, previews, saving): collect what the last phase left and hand
    the CUDA allocator's cached blocks back, so the next phase (or the WebUI beside us) can use them."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class TrainingRun:
    """The state and side work of one `train` call (train/loop.py), which drives it step by step."""

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
