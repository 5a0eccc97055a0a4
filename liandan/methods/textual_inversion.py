"""Textual inversion: train the vectors of one embedding, everything else frozen.

Trainable: one [n, width] parameter per text encoder (SDXL: clip_l and clip_g). The prompt is encoded as
A1111 encodes it at inference (the vectors spliced in at the name's tokens, 75-token chunks, CLIP skip), so
gradients reach the vectors through the frozen text encoder(s); the loss is the shared denoising loss.

Saved: the final embedding in the host's embeddings folder (`<name>.pt` or `.safetensors`; SDXL pairs are
always `.safetensors`), step copies `<run>/embeddings/<name>-<step>.<ext>`, cards
`<run>/image_embeddings/<name>-<step>.png`, and A1111's `.optim` sidecar beside each file. Step numbers are
optimizer steps done, in the file name and in the file alike (A1111 names its copies by the step held + 1).
An existing embedding continues from its saved step, and from its `.optim` when the checksum matches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liandan.errors import ConfigError, DatasetError
from liandan.formats.embedding import (
    Embedding,
    load_embedding,
    load_embedding_optimizer,
    sanitize_name,
    save_embedding_card,
    save_embedding_optimizer,
)
from liandan.job_runner import register_runner
from liandan.jobs import TextualInversionJob
from liandan.methods.embedding_create import (
    embedding_file,
    existing_embedding_file,
    load_for_model,
    new_embedding,
    write_embedding,
)
from liandan.progress import ProgressEvent, Reporter
from liandan.train.diffusion_loss import diffusion_loss, freeze_for_training
from liandan.train.method import ParamGroup, SavedArtifact
from liandan.train.training_job import MethodContext, render_preview, run_training_job

if TYPE_CHECKING:
    from PIL import Image

    from liandan.host.base import Host
    from liandan.progress import Control
    from liandan.train.loop import TrainResult

log = logging.getLogger(__name__)

LOSS_CSV = "textual_inversion_loss.csv"  # A1111's name


class EmbeddingVectors(torch.nn.Module):
    """The trainable vectors, one parameter per text encoder, keyed like the embedding file."""

    def __init__(self, vectors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.keys = list(vectors)
        self.params = torch.nn.ParameterList(torch.nn.Parameter(v.clone().float()) for v in vectors.values())

    def as_prompt_embedding(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """What PromptEncoder/generate take: one tensor for SD1/SD2, {clip_l, clip_g} for SDXL."""
        if len(self.keys) == 1:
            return self.params[0]
        return dict(zip(self.keys, self.params))

    def detached(self) -> dict[str, torch.Tensor]:
        return {key: p.detach().to("cpu", torch.float32).clone() for key, p in zip(self.keys, self.params)}


class TextualInversion:
    """The TrainingMethod of a textual-inversion job (see the module docstring)."""

    kind = "textual_inversion"
    gradient_sync = "all_reduce"  # a few vectors spliced into prompts: no module forward for DDP to hook

    def __init__(
        self, context: MethodContext, embedding: Embedding, final_path: Path, reporter: Reporter | None = None
    ) -> None:
        job: TextualInversionJob = context.job  # type: ignore[assignment]
        self.job, self.context, self.bundle = job, context, context.bundle
        self.name = embedding.name
        self.final_path = final_path
        self.start_step = embedding.step or 0
        self.reporter = reporter
        self.short_hash = self.bundle.short_hash or context.checkpoint.short_hash
        self.checkpoint_name = context.checkpoint.path.stem
        self.optimizer: Any = None
        self.last_preview: Image.Image | None = None

        from liandan.models.conditioning import PromptEncoder

        freeze_for_training(self.bundle, context.device, job.train)
        self.vectors = EmbeddingVectors(embedding.vectors).to(context.device)
        self.encoder = PromptEncoder(self.bundle, clip_skip=job.clip_skip)
        self._check_prompts_use_name()

    def _check_prompts_use_name(self) -> None:
        dataset = self.context.dataset
        prompts = [dataset.prompt(i, 0) for i in range(min(len(dataset), 16))]
        if not any(self.encoder.tokenize(p, {self.name: self.vectors.as_prompt_embedding()}).chunks[0].fixes
                   for p in prompts):  # fmt: skip
            raise DatasetError(
                f"the prompt template {self.job.data.template!r} never puts the embedding's name "
                f"{self.name!r} in a prompt (no [name] line), so nothing would train; e.g. {prompts[0]!r}"
            )

    # --- what trains ---

    def parameter_groups(self) -> list[ParamGroup]:
        return [ParamGroup("embedding", list(self.vectors.params))]

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.vectors]

    def attach_optimizer(self, optimizer: Any) -> int:
        """The loop's hook: keep the optimizer for `.optim` sidecars, start from the embedding's own
        sidecar when its checksum matches these vectors, and continue from the embedding's step."""
        self.optimizer = optimizer
        existing = existing_embedding_file(self.final_path.parent, self.name)
        if existing is not None and self.start_step > 0:
            state = load_embedding_optimizer(existing, self._embedding(self.start_step))
            if state is not None:
                try:
                    optimizer.load_state_dict(state)
                    self._message(f"continuing with the optimizer state saved in {existing}.optim")
                except (ValueError, KeyError, RuntimeError) as error:
                    self._message(f"{existing}.optim does not fit this optimizer ({error}); not used")
        return self.start_step

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        from liandan.models.conditioning import added_cond_kwargs

        cond = self.encoder.encode(batch["prompts"], {self.name: self.vectors.as_prompt_embedding()})
        extra = None
        if self.bundle.is_sdxl:
            sizes = [batch["original_size"], batch["crop_top_left"], batch["target_size"]]
            time_ids = torch.cat(sizes, dim=1)
            extra = added_cond_kwargs(cond, time_ids.float())
        return diffusion_loss(
            self.bundle,
            batch["latents"],
            cond.context,
            added_cond_kwargs=extra,
            loss_weight=batch.get("loss_weight"),
            noise=batch.get("noise"),
            timesteps=batch.get("timesteps"),
        )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {key: p.detach().clone() for key, p in zip(self.vectors.keys, self.vectors.params)}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, p in zip(self.vectors.keys, self.vectors.params):
                p.copy_(state[key])

    def after_optimizer_step(self, step: int) -> None:
        """Nothing: only the embedding's own vectors train, no rows of the token table to restore."""

    # --- what is saved ---

    def _embedding(self, step: int, name: str | None = None) -> Embedding:
        return Embedding(
            name=name or self.name,
            vectors=self.vectors.detached(),
            step=step,
            sd_checkpoint=self.short_hash,
            sd_checkpoint_name=self.checkpoint_name,
        )

    def save(self, step: int, final: bool) -> SavedArtifact:
        run_dir = self.context.run_dir
        if final:
            embedding, path = self._embedding(step), self.final_path
        else:  # A1111 stores a step copy under its file stem
            copy_name = f"{self.name}-{step}"
            embedding = self._embedding(step, copy_name)
            path = run_dir / "embeddings" / f"{copy_name}{self.final_path.suffix}"
        paths = [write_embedding(embedding, path)]
        if self.optimizer is not None:
            paths.append(save_embedding_optimizer(path, embedding, self.optimizer.state_dict()))
        if self.job.save_png_cards and not embedding.is_sdxl:  # A1111 cards hold one tensor
            card = self.last_preview or self.preview(self._card_prompt(), self.job.train.seed, enabled=True)
            card_path = run_dir / "image_embeddings" / f"{self.name}-{step}.png"
            paths.append(
                save_embedding_card(
                    self._embedding(step, f"{self.name}-{step}"),
                    card,
                    card_path,
                    self.checkpoint_name,
                    self.short_hash or "",
                )
            )
        info = {"final": True} if final else {}
        return SavedArtifact(paths, step, info)

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        """The group "embedding" when the file holds vectors of every text encoder this embedding trains."""
        saved = load_embedding(artifact.paths[0]).vectors
        shapes = {key: tuple(p.shape) for key, p in zip(self.vectors.keys, self.vectors.params)}
        return {"embedding"} if {k: tuple(v.shape) for k, v in saved.items()} == shapes else set()

    def _card_prompt(self) -> str:
        return self.job.preview.prompt or self.context.dataset.prompt(0, 0)

    def preview(self, prompt: str, seed: int, enabled: bool) -> Image.Image:
        embeddings = {self.name: self.vectors.as_prompt_embedding()} if enabled else None
        image = render_preview(self.bundle, self.job.preview, prompt, seed, self.context.device,
                               clip_skip=self.job.clip_skip, embeddings=embeddings)  # fmt: skip
        if enabled:
            self.last_preview = image
        return image

    def _message(self, text: str) -> None:
        log.info(text)
        if self.reporter is not None:
            self.reporter(ProgressEvent("message", job=self.name, message=text))


def prepare_embedding(context: MethodContext, name: str) -> tuple[Embedding, Path]:
    """The embedding to train and where its final file goes: an existing one (unless `overwrite`),
    checked against the model family, or a new one written at once (step 0) as A1111's Create does."""
    job: TextualInversionJob = context.job  # type: ignore[assignment]
    bundle, folder = context.bundle, context.host.folders.embeddings
    existing = existing_embedding_file(folder, name)
    if existing is not None and not job.overwrite:
        embedding = load_for_model(existing, bundle)
        embedding.name = name
        target = existing if existing.suffix in (".pt", ".safetensors") else None
        if target is None or (bundle.is_sdxl and target.suffix == ".pt"):
            target = embedding_file(folder, name, job.file_format, bundle.is_sdxl)
        return embedding, target
    embedding = new_embedding(bundle, name, job.init_text, job.vectors)
    path = embedding_file(folder, name, job.file_format, bundle.is_sdxl)
    if context.is_main:  # on several processes every rank builds the same vectors; one writes them
        write_embedding(embedding, path)
    return embedding, path


def check_schedules(job: TextualInversionJob) -> None:
    """Refuse a malformed lr or clip schedule before any model is loaded."""
    from liandan.train.lr_schedule import clip_value_schedule, learn_rate_schedule

    spec = job.train
    learn_rate_schedule(spec.learn_rate, spec.lr_scheduler, spec.max_steps, spec.lr_warmup_steps)
    if spec.clip_grad_mode != "disabled":
        clip_value_schedule(spec.clip_grad_value, spec.max_steps)


def run_textual_inversion(
    spec: TextualInversionJob, host: Host, reporter: Reporter, control: Control
) -> TrainResult:
    """The runner of `textual_inversion` jobs (CLI, UI, REST)."""
    if not spec.name:
        raise ConfigError("the embedding needs a name")
    name = sanitize_name(spec.name)
    check_schedules(spec)
    if spec.overwrite:  # a fresh embedding must not pick up an earlier run's saved state
        spec = spec.replace(train=spec.train.replace(resume=False))

    methods: list[TextualInversion] = []
    losses: list[float] = []

    def make_method(context: MethodContext) -> TextualInversion:
        embedding, path = prepare_embedding(context, name)
        methods.append(TextualInversion(context, embedding, path, reporter))
        return methods[-1]

    def record(event: ProgressEvent) -> None:
        if event.kind == "step" and event.loss is not None:
            losses.append(event.loss)
        reporter(event)

    result = run_training_job(
        spec,
        host,
        Reporter(record),
        control,
        name=name,
        artifact_kind="embeddings",
        loss_csv_name=LOSS_CSV,
        make_method=make_method,
    )
    if methods and losses:
        reporter(ProgressEvent("message", job=name, message=loss_summary(methods[0].final_path, losses)))
    return result


def loss_summary(path: Path, losses: list[float]) -> str:
    """Where the embedding went and how the loss moved (means of the first and last tenth of the steps:
    single-step losses jump with the random timestep)."""
    if len(losses) < 20:  # a few single-step losses compare random timesteps, not training
        return f"embedding {path}: {len(losses)} step(s), last loss {losses[-1]:.4f}"
    window = len(losses) // 10
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    return f"embedding {path}: loss {first:.4f} -> {last:.4f} (mean of the first/last {window} steps)"


register_runner(TextualInversionJob.kind, run_textual_inversion)  # type: ignore[arg-type]
