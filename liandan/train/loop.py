"""The one training loop every method uses (Accelerate; nanoGPT's order, one screen in `train`).

Per optimizer step: set lr -> micro-steps under `accelerator.accumulate` (one forward/backward each) ->
average gradients over ranks (methods with gradient_sync "all_reduce"; DDP does it for "prepare") -> NaN
guard (one device read with the loss) -> audit (first updating step) -> clip (unscaled) -> step -> zero grad
-> method hook -> EMA update -> log -> save/validate/preview when due -> stop? On a GPU with the fused AdamW
the NaN guard and the log read a step's values during the next one (train/nan_guard.py: "pipelined"), so the
host never waits for the device in the hot loop; side work books the step in flight first. Saves come after
the step because an artifact is named by the steps it holds. The run's state and side work (resume,
saves, previews, validation, the NaN guard's bookkeeping, logs) are train/run.py's `TrainingRun`; saves,
previews and validation see its "eval weights" (the EMA of train/ema.py, or a schedule-free optimizer's
average), the full state holds the training weights. With `fused_backward` (train/fused_backward.py) each
tensor steps inside backward: the loss is checked before backward instead, and clip and step have nothing
left to do.

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

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liandan.errors import ConfigError, DatasetError
from liandan.progress import Control, Reporter
from liandan.train import distributed
from liandan.train.batches import MicroBatches, batch_keys, worker_count
from liandan.train.diffusion_loss import compile_warning
from liandan.train.lr_schedule import clip_value_schedule, learn_rate_schedule
from liandan.train.nan_guard import (
    SNAPSHOT_EVERY,
    StepStatus,
    found_inf,
    status_values,
    step_status,
    step_unless_found_inf,
)
from liandan.train.optimizers import set_learning_rate
from liandan.train.run import TrainingRun
from liandan.train.validation import Validation

if TYPE_CHECKING:
    from accelerate import Accelerator

    from liandan.jobs import TrainSpec
    from liandan.train.method import SavedArtifact, TrainingMethod

log = logging.getLogger(__name__)

BatchPlan = Callable[[int], list[list[int]]]


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
    run = TrainingRun(
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
    run: TrainingRun,
    dataset: Any,
    plan_for: BatchPlan,
    rate_at: Callable[[int], float | None],
    clip_values: Any,
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
