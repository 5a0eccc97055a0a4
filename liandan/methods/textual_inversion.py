"""Textual inversion: train the vectors of one embedding, everything else frozen.

Trainable: one [n, width] parameter per text encoder (SDXL: clip_l and clip_g). The prompt is encoded as
A1111 encodes it at inference (the vectors spliced in at the name's tokens, 75-token chunks, CLIP skip), so
gradients reach the vectors through the frozen text encoder(s); the loss is the shared denoising loss.

Saved: the final embedding in the host's embeddings folder (`<name>.pt` or `.safetensors`; SDXL pairs are
always `.safetensors`), step copies `<run>/embeddings/<name>-<step>.<ext>`, cards
`<run>/image_embeddings/<name>-<step>.png`, and A1111's `.optim` sidecar beside each file. Step numbers are
optimizer steps done, in the file name and in the file alike (A1111 names its copies by the step held + 1).
An existing embedding continues from its saved step, and from its `.optim` when the checksum matches; it
keeps its own vector count (the job's `vectors` applies to a new one, and a different one is said). One that
A1111 loads from a `.bin` or a PNG/WebP card is written back as `.pt`/`.safetensors` and the original moved
into the run folder: two files of one name in embeddings/ would make A1111 load either of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liandan.errors import DatasetError
from liandan.formats.embedding import (
    Embedding,
    load_embedding,
    load_embedding_optimizer,
    save_embedding_card,
    save_embedding_optimizer,
)
from liandan.formats.embedding_files import (
    WRITTEN_SUFFIXES,
    embedding_file,
    existing_embedding_file,
    refuse_existing,
    write_embedding,
)
from liandan.jobs import TextualInversionJob
from liandan.models.embedding_vectors import TrainableEmbedding, load_for_model, new_embedding
from liandan.train.diffusion_loss import batch_added_conditioning, diffusion_loss, freeze_for_training
from liandan.train.method import ParamGroup, SavedArtifact
from liandan.train.optimizer_sidecar import OptimizerSidecar
from liandan.train.training_job import MethodContext, render_preview, run_training_job

if TYPE_CHECKING:
    from PIL import Image

    from liandan.host.base import Host
    from liandan.progress import Control, Reporter
    from liandan.train.loop import TrainResult

LOSS_CSV = "textual_inversion_loss.csv"  # A1111's name


class TextualInversion:
    """The TrainingMethod of a textual-inversion job (see the module docstring)."""

    kind = "textual_inversion"
    gradient_sync = "all_reduce"  # a few vectors spliced into prompts: no module forward for DDP to hook

    def __init__(self, context: MethodContext, embedding: Embedding, final_path: Path) -> None:
        job: TextualInversionJob = context.job  # type: ignore[assignment]
        self.job, self.context, self.bundle = job, context, context.bundle
        self.name = embedding.name
        self.final_path = final_path
        self.start_step = embedding.step or 0
        self.short_hash = context.checkpoint.short_hash
        self.checkpoint_name = context.checkpoint.path.stem
        self.sidecar = OptimizerSidecar(context.say)
        self.last_preview: Image.Image | None = None

        from liandan.models.conditioning import PromptEncoder

        freeze_for_training(self.bundle, context.device, job.train)
        self.vectors = TrainableEmbedding(embedding.vectors).to(context.device)
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
        saved = None
        if self.start_step > 0 and self.final_path.is_file():
            saved = load_embedding_optimizer(self.final_path, self._embedding(self.start_step))
        self.sidecar.attach(optimizer, saved, self.final_path)
        return self.start_step

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        cond = self.encoder.encode(batch["prompts"], {self.name: self.vectors.as_prompt_embedding()})
        return diffusion_loss(
            self.bundle,
            batch["latents"],
            cond.context,
            added_cond_kwargs=batch_added_conditioning(self.bundle, batch, cond),
            loss_weight=batch.get("loss_weight"),
            noise=batch.get("noise"),
            timesteps=batch.get("timesteps"),
            train=self.job.train,
        )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.vectors.state()

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.vectors.load_state(state)

    def after_optimizer_step(self, step: int) -> None:
        """Nothing: only the embedding's own vectors train, no rows of the token table to restore."""

    def close(self) -> None:
        """Nothing: the vectors are spliced into each prompt, the model itself is not changed."""

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
        state = self.sidecar.state_dict()
        if state is not None:
            paths.append(save_embedding_optimizer(path, embedding, state))
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


def prepare_embedding(context: MethodContext) -> tuple[Embedding, Path]:
    """The embedding to train and where its final file goes: an existing one (unless `overwrite`),
    checked against the model family, or a new one written at once (step 0) as A1111's Create does."""
    job: TextualInversionJob = context.job  # type: ignore[assignment]
    bundle, folder = context.bundle, context.host.folders.embeddings
    existing = existing_embedding_file(folder, job.name)
    target = embedding_file(folder, job.name, job.file_format, bundle.is_sdxl)
    if existing is None or job.overwrite:
        embedding = new_embedding(bundle, job.name, job.init_text, job.vectors)
    else:
        embedding = load_for_model(existing, bundle)
        embedding.name = job.name
        if embedding.num_vectors != job.vectors:
            context.say(
                f"continuing embedding {job.name!r} ({existing.name}) with its own {embedding.num_vectors} "
                f"vector(s) per token; vectors = {job.vectors} applies to a new embedding (tick Overwrite "
                "to start over with it)"
            )
        if existing.suffix in WRITTEN_SUFFIXES and not (bundle.is_sdxl and existing.suffix == ".pt"):
            return embedding, existing
    if context.is_main:  # on several processes every rank builds the same vectors; one writes them
        write_embedding(embedding, target)
        if existing is not None and existing != target:
            _move_aside(context, existing, target)
    return embedding, target


def _move_aside(context: MethodContext, original: Path, replacement: Path) -> None:
    """A1111 would load either of two files of one name: the original goes into the run folder."""
    kept = context.run_dir / "replaced" / original.name
    kept.parent.mkdir(parents=True, exist_ok=True)
    original.replace(kept)
    context.say(
        f"embedding {original.name} is now {replacement.name} (A1111 loads only one file of a name); "
        f"the original was moved to {kept}"
    )


def create_embedding(host: Host, job: TextualInversionJob) -> Path:
    """A1111's "Create embedding": `<embeddings>/<name>` at step 0 for the job's model, from its init text
    and vector count, without training; usable in prompts at once. Refuses an existing name unless
    `job.overwrite`. Returns the path."""
    folder = host.folders.embeddings
    if not job.overwrite:
        refuse_existing(folder, job.name)
    checkpoint = host.resolve_checkpoint(job.model)
    with host.model_for_training(checkpoint.path) as bundle:
        embedding = new_embedding(bundle, job.name, job.init_text, job.vectors)
        path = write_embedding(embedding, embedding_file(folder, job.name, job.file_format, bundle.is_sdxl))
    host.refresh("embeddings")
    return path


def run_textual_inversion(
    spec: TextualInversionJob, host: Host, reporter: Reporter, control: Control
) -> TrainResult:
    """The runner of `textual_inversion` jobs (CLI, UI, REST)."""
    if spec.overwrite:  # a fresh embedding must not pick up an earlier run's saved state
        spec = spec.replace(train=spec.train.replace(resume=False))

    def make_method(context: MethodContext) -> TextualInversion:
        return TextualInversion(context, *prepare_embedding(context))

    return run_training_job(
        spec, host, reporter, control, name=spec.name, loss_csv_name=LOSS_CSV, make_method=make_method
    )
