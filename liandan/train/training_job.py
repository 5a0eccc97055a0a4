"""Running a training job, the same way for every method: resolve the model through the host, build and
cache the dataset, hand the method to the one loop, close the method, record provenance, make the result
usable at once, and say where it went and how the loss moved.

A method module supplies only `make_method(context) -> TrainingMethod`; this file owns the order of things.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from liandan.errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

    from liandan.data.dataset import DatasetMix, TrainingDataset
    from liandan.host.base import ArtifactKind, CheckpointRef, Host
    from liandan.jobs import DataSpec, JobSpec, PreviewSpec, TrainSpec, ValidationSpec
    from liandan.models.bundle import ModelBundle
    from liandan.models.conditioning import EmbeddingVectors
    from liandan.progress import Control, ProgressEvent, Reporter
    from liandan.train.class_images import ClassImageSettings
    from liandan.train.loop import TrainResult
    from liandan.train.method import TrainingMethod
    from liandan.train.validation import Validation

log = logging.getLogger(__name__)


@dataclass
class MethodContext:
    """What a method is built from: the job, the model it trains on, its dataset and folders."""

    job: JobSpec
    host: Host
    checkpoint: CheckpointRef
    bundle: ModelBundle
    dataset: TrainingDataset | DatasetMix
    run_dir: Path
    device: torch.device
    is_main: bool = True  # the process that writes files (rank 0)
    reporter: Reporter | None = None
    # the prompt and seed of the run's previews and self-test (a method may render the base model's first)
    preview_prompt: str = ""
    preview_seed: int = 0

    def say(self, text: str) -> None:
        """A message for the user (job status, console), e.g. what happened to a file the job replaced."""
        from liandan.progress import ProgressEvent

        log.info(text)
        if self.reporter is not None:
            self.reporter(ProgressEvent("message", job=getattr(self.job, "name", ""), message=text))


def find_run_dir(log_root: Path, name: str, resume: bool, today: dt.date | None = None) -> Path:
    """A1111's `<log dir>/<YYYY-MM-DD>/<name>/`. A resumable run keeps the folder it started in, even on a
    later day, so its saved state is found again."""
    if resume:
        earlier = sorted(log_root.glob(f"*/{name}/state"), key=lambda p: p.stat().st_mtime)
        if earlier:
            return earlier[-1].parent
    return log_root / (today or dt.date.today()).isoformat() / name


def build_dataset(
    data: DataSpec, train: TrainSpec, *, name: str, bundle: ModelBundle, host: Host, model_id: str | None
) -> TrainingDataset:
    from liandan.data.dataset import TrainingDataset

    return TrainingDataset(
        data,
        name=name,
        vae=bundle.vae,
        batch_size=train.batch_size,
        seed=train.seed,
        cache_dir=host.folders.logs / ".latent_cache",
        model_id=model_id,
        templates_dir=host.folders.templates,
    )


def build_training_data(
    data: list[DataSpec],
    train: TrainSpec,
    *,
    name: str,
    bundle: ModelBundle,
    host: Host,
    model_id: str | None,
    generated: set[Path] | None = None,
    make_generated: Callable[[], object] | None = None,
) -> TrainingDataset | DatasetMix:
    """The job's dataset, or its datasets (`data` and `extra_data`) trained together. Folders in
    `generated` (class images) are read after `make_generated()` fills them, and after every other folder
    was read, so an unusable instance folder stops the job before any image is made."""
    from liandan.data.dataset import DatasetMix

    def build(spec: DataSpec) -> TrainingDataset:
        return build_dataset(spec, train, name=name, bundle=bundle, host=host, model_id=model_id)

    later = generated or set()
    parts: list[TrainingDataset | None] = [None if d.folder in later else build(d) for d in data]
    if make_generated is not None:
        make_generated()
    built = [part if part is not None else build(spec) for part, spec in zip(parts, data)]
    return built[0] if len(built) == 1 else DatasetMix(built, seed=train.seed)


def build_validation(
    spec: ValidationSpec,
    train: TrainSpec,
    *,
    name: str,
    bundle: ModelBundle,
    host: Host,
    model_id: str | None,
) -> Validation:
    """The held-out set with everything random turned off, scored at timesteps spread evenly over the
    noise schedule (the middle of each of `spec.timesteps` equal parts)."""
    from liandan.train.validation import Validation

    fixed = spec.replace(
        flip=0.0, latent_sampling="deterministic", shuffle_tags=False, tag_dropout=0.0, repeats=1
    )
    dataset = build_dataset(fixed, train, name=name, bundle=bundle, host=host, model_id=model_id)
    count = int(bundle.noise_scheduler.config.num_train_timesteps)
    timesteps = tuple(int((k + 0.5) * count / spec.timesteps) for k in range(spec.timesteps))
    return Validation(dataset, spec.every, timesteps, seed=train.seed)


def job_data_specs(job: JobSpec) -> list[DataSpec]:
    """The datasets a job trains: its concepts' instance and class images (a job with concepts), or its
    `data`; then its `extra_data`."""
    from liandan.data.concepts import concept_data_specs
    from liandan.jobs import ConceptJobSpec

    shared: DataSpec = job.data  # type: ignore[attr-defined]
    extra: list[DataSpec] = list(job.extra_data)  # type: ignore[attr-defined]
    if isinstance(job, ConceptJobSpec) and job.concepts:
        return [*concept_data_specs(job.concepts, shared, job.prior_loss_weight), *extra]
    return [shared, *extra]


def generated_folders(job: JobSpec) -> set[Path]:
    """The class folders the job fills with generated images before training (they may not exist yet)."""
    from liandan.jobs import ConceptJobSpec

    if not isinstance(job, ConceptJobSpec):
        return set()
    return {c.class_folder for c in job.concepts if c.has_class_images and c.num_class_images}


def class_image_settings(job: JobSpec, name: str) -> ClassImageSettings:
    """Class images are made at the dataset's size with the preview's sampler, a training batch at a time."""
    from liandan.train.class_images import ClassImageSettings

    data: DataSpec = job.data  # type: ignore[attr-defined]
    train: TrainSpec = job.train  # type: ignore[attr-defined]
    preview: PreviewSpec = job.preview  # type: ignore[attr-defined]
    return ClassImageSettings(
        width=data.width, height=data.height, sampler=preview.sampler, batch_size=train.batch_size,
        seed=train.seed, clip_skip=job.clip_skip, name=name,
    )  # fmt: skip


def cap_accumulation(spec: TrainSpec, batches_per_epoch: int, processes: int) -> TrainSpec:
    """A1111 lowers gradient accumulation to what an epoch holds (len // batch_size) instead of refusing a
    small dataset; so do we, counting the batches every process takes per step."""
    most = max(1, batches_per_epoch // processes)
    return spec if spec.gradient_accumulation <= most else spec.replace(gradient_accumulation=most)


def preview_prompt_and_seed(preview: PreviewSpec, dataset: TrainingDataset) -> tuple[str, int]:
    """An empty preview prompt uses the template filled with the first image's caption, as A1111 does."""
    prompt = preview.prompt or dataset.prompt(0, 0)
    seed = preview.seed if preview.seed >= 0 else random.randrange(2**31)
    return prompt, seed


def render_preview(
    bundle: ModelBundle,
    preview: PreviewSpec,
    prompt: str,
    seed: int,
    device: torch.device,
    *,
    clip_skip: int,
    embeddings: Mapping[str, EmbeddingVectors] | None = None,
) -> Image.Image:
    """One preview image with the job's preview settings. The VAE comes to `device` for the render and goes
    back after: "move VAE and CLIP to RAM" keeps it off the GPU between previews."""
    from liandan.models.sampling import generate

    home = bundle.vae.device
    bundle.vae.to(device)
    try:
        return generate(
            bundle,
            prompt,
            preview.negative_prompt,
            steps=preview.steps,
            cfg_scale=preview.cfg_scale,
            seed=seed,
            width=preview.width,
            height=preview.height,
            sampler=preview.sampler,
            clip_skip=clip_skip,
            embeddings=embeddings,
        )
    finally:
        bundle.vae.to(home)


@contextlib.contextmanager
def cpu_threads(count: int, device: torch.device) -> Iterator[int | None]:
    """The intra-op threads a run on the CPU trains with, for the block: `count`, or torch's own when 0,
    which on a quiet machine is the fastest even for the tiny model (bench/RESULTS.md, cpu-threads rows);
    on a machine busy with other work one thread avoids the threads' wait for each other (a tenfold
    slowdown measured on 2 cores). Yields the count, None off the CPU (the host's threads only feed the
    GPU); afterwards torch's count is back: in the WebUI the same process generates images."""
    if device.type != "cpu":
        yield None
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


@contextlib.contextmanager
def cuda_probe_from_runtime(device: torch.device) -> Iterator[None]:
    """For a run off CUDA in a process with no CUDA device: `torch.cuda.is_available()` answers from the
    CUDA runtime (once, then cached) instead of loading NVML again on every call, for the block.

    torch's optimizers ask on every step, and `PYTORCH_NVML_BASED_CUDA_CHECK=1` (which lightning_fabric sets
    on import, so inside the WebUI it is set) makes each answer load NVML until CUDA is initialised: about
    1 ms a step in a real WebUI on a machine without an NVIDIA driver, more than half of what AdamW's step
    took there on the tiny model. With no device there is no fork to protect, which is what that setting is
    for; afterwards it is back as it was."""
    # (asked last: with the setting on, device_count itself asks NVML, or the runtime where NVML is absent)
    if (
        device.type == "cuda"
        or os.environ.get(NVML_CHECK) != "1"
        or torch.cuda.is_initialized()
        or torch.cuda.device_count() > 0
    ):
        yield
        return
    del os.environ[NVML_CHECK]
    try:
        yield
    finally:
        os.environ[NVML_CHECK] = "1"


def run_training_job(
    job: JobSpec,
    host: Host,
    reporter: Reporter,
    control: Control,
    *,
    name: str,
    loss_csv_name: str,
    make_method: Callable[[MethodContext], TrainingMethod],
    prepare_model: Callable[[ModelBundle], None] | None = None,
) -> TrainResult:
    """The whole job. The job spec must carry `train`, `data` and `preview` sections; the folder its
    artifact goes to is its kind's in the registry. `prepare_model` changes the model before anything uses
    it (DreamBooth's separate VAE); a VAE it loads records its hash in `bundle.info["vae_hash"]`, which keys
    the latent cache with the checkpoint's."""
    from liandan import registry
    from liandan.jobs import ConceptJobSpec, job_to_dict
    from liandan.models.loading import bundle_short_hash
    from liandan.progress import ProgressEvent, Reporter
    from liandan.provenance import provenance, write_provenance
    from liandan.train.class_images import fill_class_folders
    from liandan.train.loop import make_accelerator, train
    from liandan.train.run import release_memory

    artifact_kind: ArtifactKind | None = registry.method(job.kind).artifact
    losses: list[float] = []

    def record(event: ProgressEvent) -> None:
        if event.kind == "step" and event.loss is not None:
            losses.append(event.loss)

    reporter = Reporter(record, reporter)

    train_spec: TrainSpec = job.train  # type: ignore[attr-defined]
    data_specs = job_data_specs(job)
    validation_spec: ValidationSpec | None = job.validation  # type: ignore[attr-defined]
    preview: PreviewSpec = job.preview  # type: ignore[attr-defined]
    for spec in [*data_specs, *([validation_spec] if validation_spec else [])]:
        if not spec.folder.is_dir() and spec.folder not in generated_folders(job):
            raise DatasetError(f"dataset folder {spec.folder} does not exist or is not a folder")

    checkpoint = host.resolve_checkpoint(job.model)
    run_dir = find_run_dir(job.log_dir or host.folders.logs, name, train_spec.resume)
    reporter(
        ProgressEvent("start", job=name, total=train_spec.max_steps, message=f"loading {checkpoint.title}")
    )
    # made before the model: under `accelerate launch` its device is this rank's GPU (a bare "cuda" would
    # put every rank on GPU 0), and the loop trains with this same Accelerator
    accelerator = make_accelerator(train_spec)
    device = accelerator.device
    # the method is closed (its hooks off the bundle, which may be the WebUI's model) however the loop ends
    with host.model_for_training(checkpoint.path) as bundle, contextlib.ExitStack() as cleanup:
        # the one reference the job carries from here: methods and provenance read it, nothing re-resolves
        checkpoint = dataclasses.replace(
            checkpoint, short_hash=bundle_short_hash(bundle) or checkpoint.short_hash, family=bundle.family
        )
        if prepare_model is not None:
            prepare_model(bundle)
        threads = cleanup.enter_context(cpu_threads(train_spec.cpu_threads, device))
        cleanup.enter_context(cuda_probe_from_runtime(device))
        if threads is not None:
            reporter(
                ProgressEvent("message", job=name, message=f"training on the CPU with {threads} thread(s)")
            )
        model_id = checkpoint.short_hash
        if model_id and "vae_hash" in bundle.info:
            model_id = f"{model_id}+vae{bundle.info['vae_hash']}"
        where = {"name": name, "bundle": bundle, "host": host, "model_id": model_id}
        concepts = job.concepts if isinstance(job, ConceptJobSpec) else ()

        def make_class_images() -> None:
            """On the main process; the others wait, then read the folders it filled."""
            if accelerator.is_main_process:
                settings = class_image_settings(job, name)
                fill_class_folders(
                    bundle, concepts, settings, device=device, reporter=reporter, control=control, job=name
                )
            accelerator.wait_for_everyone()

        dataset = build_training_data(
            data_specs,
            train_spec,
            **where,
            generated=generated_folders(job),
            make_generated=make_class_images,
        )
        validation = build_validation(validation_spec, train_spec, **where) if validation_spec else None
        templates = [part.template.record() for part in dataset.parts]
        for template in templates:
            message = f"prompt template {template['file']} ({len(template['lines'])} lines)"
            if not template["file"]:
                message = f"prompt {template['lines'][0]!r}"
            reporter(ProgressEvent("message", job=name, message=message))
        if dataset.skipped:
            reporter(ProgressEvent("message", job=name, message=dataset.report(), extra={"level": "warning"}))
        train_spec = cap_accumulation(train_spec, len(dataset.batch_plan(0)), accelerator.num_processes)
        if train_spec.gradient_accumulation != job.train.gradient_accumulation:  # type: ignore[attr-defined]
            accelerator.gradient_accumulation_steps = train_spec.gradient_accumulation
            message = (
                f"gradient accumulation lowered to {train_spec.gradient_accumulation}: one epoch of this "
                "dataset holds no more batches (as A1111 does)"
            )
            reporter(ProgressEvent("message", job=name, message=message, extra={"level": "warning"}))
        # float32: a half-precision VAE (SDXL's above all) turns latents into NaN
        bundle.vae.to(device, torch.float32)
        reporter(
            ProgressEvent("message", job=name, message=f"caching latents of {len(dataset.images)} images")
        )
        dataset.cache_latents(should_stop=lambda: control.interrupted)
        if validation is not None:
            validation.dataset.cache_latents(should_stop=lambda: control.interrupted)
        needs_vae = dataset.needs_vae or (validation is not None and validation.dataset.needs_vae)
        if train_spec.move_unused_to_cpu and not needs_vae:
            bundle.vae.to("cpu")  # back to the GPU only for previews (the method's business)
        release_memory()  # the VAE's activations and the decoded images are garbage now
        prompt, seed = preview_prompt_and_seed(preview, dataset)
        context = MethodContext(
            job, host, checkpoint, bundle, dataset, run_dir, device, accelerator.is_main_process, reporter,
            preview_prompt=prompt, preview_seed=seed,
        )  # fmt: skip
        method = make_method(context)
        cleanup.callback(method.close)
        host.prepare_trainable(method.trainable_modules())
        result = train(
            method,
            dataset,
            train_spec,
            run_dir=run_dir,
            reporter=Reporter(lambda event: _all_but_done(event, reporter)),
            control=control,
            batch_plan=dataset.batch_plan,
            loss_csv_name=loss_csv_name,
            preview_prompt=prompt if preview.self_test or train_spec.preview_every else None,
            preview_seed=seed,
            self_test=preview.self_test,
            accelerator=accelerator,
            job_spec=job_to_dict(job),
            validation=validation,
        )
    release_memory()
    finals = [a for a in result.artifacts if a.info.get("final")]
    model_info = {"title": checkpoint.title, "short_hash": checkpoint.short_hash, "family": checkpoint.family}
    for artifact in finals[-1:]:
        record = provenance(
            job,
            dataset_files=[image.record.path for image in dataset.images],
            seed=train_spec.seed,
            model=model_info,
            extra={
                "result": {"step": result.step, "stopped": result.stopped_reason, "loss": result.last_loss},
                "templates": templates,
            },
        )
        write_provenance(artifact.paths[0], record)
    if artifact_kind is not None:
        host.refresh(artifact_kind)
    paths = tuple(p for a in finals for p in a.paths)
    reporter(
        ProgressEvent(
            "done",
            job=name,
            step=result.step,
            total=train_spec.max_steps,
            loss=result.last_loss,
            message=result.message,
            paths=paths,
        )
    )
    if finals and losses:  # last, so the status box ends on where the artifact went and how it trained
        reporter(ProgressEvent("message", job=name, message=loss_summary(finals[-1].paths[0], losses)))
    return result


def loss_summary(path: Path, losses: list[float]) -> str:
    """Where the artifact went and how the loss moved (means of the first and last tenth of the steps:
    single-step losses jump with the random timestep)."""
    if len(losses) < 20:  # a few single-step losses compare random timesteps, not training
        return f"saved {path}: {len(losses)} step(s), last loss {losses[-1]:.4f}"
    window = len(losses) // 10
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    return f"saved {path}: loss {first:.4f} -> {last:.4f} (mean of the first/last {window} steps)"


def _all_but_done(event: ProgressEvent, reporter: Reporter) -> None:
    """The loop's events, except its "done": the job says it once, after provenance and the refresh."""
    if event.kind != "done":
        reporter(event)
