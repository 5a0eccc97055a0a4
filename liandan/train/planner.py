"""The VRAM planner (`python -m liandan plan job.toml`, the training tabs' "Plan memory"): which memory
switches a job needs to fit the GPU, measured, not guessed.

It dry-runs the job for `DRY_RUN_STEPS` optimizer steps on the real device (outputs, logs and caches go to a
scratch folder that is deleted after; the user's folders are only read), at its own settings and then with
switches turned on, and reads the peak of `torch.cuda.max_memory_allocated()` after each run. The budget is
what this process may use: `torch.cuda.mem_get_info()`'s free memory plus what its own allocator holds
already (inside the WebUI, the model that training unloads), less `HEADROOM` for fragmentation.

The switches, cheapest first (least loss of speed or quality):
1. move_unused_to_cpu: the VAE and text encoders leave the GPU once latents are cached (no cost).
2. latent_cache: latents encoded once, not every step (no cost; a random latent sample is drawn from the
   cached distribution).
3. fused_backward: each tensor steps in backward, so the whole gradient never exists (no cost; it excludes
   gradient accumulation).
4. 8-bit optimizer: AdamW -> AdamW8bit, Lion -> Lion8bit (optimizer state in 8 bits; a small quality cost).
5. gradient_checkpointing: activations recomputed in backward (about 20-30% slower).
6. batch size 1 with the same effective batch by gradient accumulation (slower: less parallel work).
7. text encoder training off, for jobs that have that switch (`TEXT_ENCODER_FIELDS`; a quality cost).
A switch that does not apply (already on, or refused together with an earlier one) is left out.

The choice: with each switch costing more than all cheaper ones together, the cheapest set that fits holds
the first switch k at which switches 1..k fit; then each cheaper switch is dropped, the dearest first, if
the set still fits without it. That assumes a switch never raises the peak; it costs at most twice as many
dry runs as there are switches.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liandan.errors import ConfigError

if TYPE_CHECKING:
    from liandan.host.base import Host
    from liandan.jobs import JobSpec

DRY_RUN_STEPS = 3  # the first step allocates the optimizer state; the next ones show the steady peak
HEADROOM = 0.08  # of the budget, kept free for the allocator's fragmentation
TEXT_ENCODER_FIELDS = ("train_text_encoder",)  # a job's bool switch for training its text encoder(s)
NO_GPU = "no CUDA GPU: the planner measures memory on the GPU that will train, and cannot measure here"

Measure = Callable[["JobSpec"], float]  # a job -> its peak bytes; math.inf when it does not fit at all


def _train_flag(name: str) -> Callable[[Any], Any | None]:
    """A switch that turns the bool TrainSpec.<name> on (None: on already)."""

    def apply(job: Any) -> Any | None:
        return None if getattr(job.train, name) else job.replace(train=job.train.replace(**{name: True}))

    return apply


def _latent_cache(job: Any) -> Any | None:
    datasets = [job.data, *getattr(job, "extra_data", ())]
    if all(d.latent_cache != "off" for d in datasets):
        return None
    cached = [d.replace(latent_cache="ram") if d.latent_cache == "off" else d for d in datasets]
    return job.replace(data=cached[0], extra_data=tuple(cached[1:]))


EIGHT_BIT = {"AdamW": "AdamW8bit", "Lion": "Lion8bit"}


def _eight_bit(job: Any) -> Any | None:
    smaller = EIGHT_BIT.get(job.train.optimizer)
    return None if smaller is None else job.replace(train=job.train.replace(optimizer=smaller))


def _batch_one(job: Any) -> Any | None:
    train = job.train
    if train.batch_size == 1:
        return None
    accumulation = train.gradient_accumulation * train.batch_size
    return job.replace(train=train.replace(batch_size=1, gradient_accumulation=accumulation))


def _text_encoder_off(job: Any) -> Any | None:
    on = {name: False for name in TEXT_ENCODER_FIELDS if getattr(job, name, False) is True}
    return job.replace(**on) if on else None


@dataclass(frozen=True)
class Switch:
    name: str
    description: str
    apply: Callable[[Any], Any | None]  # the job with the switch on; None when it does not apply


SWITCHES = (
    Switch("move_unused_to_cpu", "move the VAE and text encoders to RAM", _train_flag("move_unused_to_cpu")),
    Switch("latent_cache", "cache latents in RAM", _latent_cache),
    Switch("fused_backward", "fused backward (step in backward)", _train_flag("fused_backward")),
    Switch("8bit_optimizer", "8-bit optimizer", _eight_bit),
    Switch("gradient_checkpointing", "gradient checkpointing", _train_flag("gradient_checkpointing")),
    Switch("batch_size_1", "batch size 1 with gradient accumulation", _batch_one),
    Switch("text_encoder_off", "no text encoder training", _text_encoder_off),
)


def with_switches(job: Any, names: frozenset[str]) -> tuple[Any, frozenset[str]]:
    """The job with the named switches on, in SWITCHES order, and the names that applied."""
    applied = set()
    for switch in SWITCHES:
        if switch.name not in names:
            continue
        try:
            changed = switch.apply(job)
        except ConfigError:  # refused beside an earlier switch (fused backward and accumulation)
            changed = None
        if changed is not None:
            job, applied = changed, applied | {switch.name}
    return job, frozenset(applied)


@dataclass
class Plan:
    """`chosen`: the switches to turn on (empty: the job fits as it is; None: nothing fits or nothing was
    measured). `peaks`: every measured set of switches -> its peak in bytes (inf: out of memory)."""

    budget: float
    chosen: frozenset[str] | None
    peaks: dict[frozenset[str], float] = field(default_factory=dict)
    message: str = ""

    @property
    def job_changes(self) -> list[str]:
        if not self.chosen:
            return []
        return [s.description for s in SWITCHES if s.name in self.chosen]


def choose(job: Any, measure: Measure, budget: float) -> Plan:
    """The cheapest set of switches whose dry run fits `budget` bytes (see the module docstring)."""
    peaks: dict[frozenset[str], float] = {}

    def fits(names: frozenset[str]) -> bool:
        changed, applied = with_switches(job, names)
        if applied not in peaks:
            peaks[applied] = measure(changed)
        return peaks[applied] <= budget

    if fits(frozenset()):
        return _described(Plan(budget, frozenset(), peaks))
    for k in range(len(SWITCHES)):
        chosen = frozenset(s.name for s in SWITCHES[: k + 1])
        if fits(chosen):
            break
    else:
        return _described(Plan(budget, None, peaks))
    for cheaper in reversed(SWITCHES[:k]):
        if cheaper.name in chosen and fits(chosen - {cheaper.name}):
            chosen -= {cheaper.name}
    return _described(Plan(budget, with_switches(job, chosen)[1], peaks))


def _gib(size: float) -> str:
    return "out of memory" if math.isinf(size) else f"{size / 2**30:.2f} GiB"


def _described(plan: Plan) -> Plan:
    names = {s.name: s.description for s in SWITCHES}
    lines = [f"budget {_gib(plan.budget)} (free GPU memory less {HEADROOM:.0%} headroom)"]
    for switches, peak in plan.peaks.items():
        setting = ", ".join(names[n] for n in sorted(switches, key=list(names).index)) or "as set"
        lines.append(f"  {setting}: peak {_gib(peak)}")
    if plan.chosen is None:
        lines.append("nothing fits, not even with every switch: use a smaller resolution or a larger GPU")
    elif not plan.chosen:
        lines.append("the job fits as it is")
    else:
        lines.append(f"turn on: {'; '.join(plan.job_changes)}")
    lines.append("switches tried cheapest first: " + ", ".join(s.description for s in SWITCHES))
    plan.message = "\n".join(lines)
    return plan


def dry_run_peak(job: Any, host: Host) -> float:
    """The peak GPU bytes of the job's first DRY_RUN_STEPS steps (math.inf on out-of-memory); what it
    writes goes to a scratch folder, deleted after."""
    import torch

    from liandan.job_runner import run_job
    from liandan.jobs import ConceptJobSpec
    from liandan.progress import Control, Reporter
    from liandan.train.class_images import without_class_images_to_make
    from liandan.train.run import release_memory

    scratch = Path(tempfile.mkdtemp(prefix="liandan-plan-"))
    control = Control()
    peak = 0

    def watch(event: Any) -> None:
        nonlocal peak
        if event.kind == "step" and event.step >= DRY_RUN_STEPS:
            peak = max(peak, torch.cuda.max_memory_allocated())
            control.interrupt()

    train = job.train.replace(
        max_steps=max(job.train.max_steps, DRY_RUN_STEPS), save_every=0, preview_every=0, resume=False
    )
    dry = job.replace(
        train=train, log_dir=None, validation=None, preview=job.preview.replace(self_test=False)
    )
    if isinstance(dry, ConceptJobSpec):  # class images would be generated into the user's folders
        dry = without_class_images_to_make(dry)
    release_memory()
    torch.cuda.reset_peak_memory_stats()
    try:
        run_job(dry, _ScratchHost(host, scratch), Reporter(watch), control)
    except torch.cuda.OutOfMemoryError:
        return math.inf
    finally:
        release_memory()
        shutil.rmtree(scratch, ignore_errors=True)
    return float(peak or torch.cuda.max_memory_allocated())


class _ScratchHost:
    """The user's host for reading (models, templates, the checkpoint list), a scratch folder for every
    output; nothing is refreshed."""

    def __init__(self, host: Host, scratch: Path) -> None:
        self._host = host
        outputs = ("embeddings", "hypernetworks", "checkpoints", "lora", "aesthetic_embeddings", "logs")
        self.folders = dataclasses.replace(host.folders, **{name: scratch / name for name in outputs})
        for name in outputs:
            (scratch / name).mkdir()

    def refresh(self, kind: Any) -> None:
        """Nothing: the dry run's files are not for the user."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


def gpu_budget() -> float:
    import torch

    free, _ = torch.cuda.mem_get_info()
    return (free + torch.cuda.memory_reserved()) * (1 - HEADROOM)


def plan_job(job: JobSpec, host: Host, measure: Measure | None = None, budget: float | None = None) -> Plan:
    """The plan for `job` on this machine's GPU; on a machine without one, a Plan that says so."""
    import torch

    if measure is None and not torch.cuda.is_available():
        return Plan(0.0, None, message=NO_GPU)
    if not hasattr(job, "train"):
        raise ConfigError(f"a {job.kind} job does not train: there is no memory to plan")
    return choose(
        job,
        measure or (lambda candidate: dry_run_peak(candidate, host)),
        gpu_budget() if budget is None else budget,
    )
