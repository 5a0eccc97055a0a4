"""DreamBooth: fine-tune the model itself on concepts (with prior preservation through their class images) and
save it as a single-file checkpoint that A1111 lists in its top-left dropdown.

Trainable: the UNet, and with `train_text_encoder` the text encoder(s) (SDXL: both) at their own rate until
`text_encoder_stop_step`. Trained weights are float32 (the optimizer's master copy; mixed precision
autocasts the forward); frozen text encoders keep their loaded dtype, so the saved file holds them unchanged.
Text-encoder parameters the conditioning never reaches (the last layer when the penultimate one is used: SD2,
SDXL, CLIP skip) are found by one probe and left frozen, so every trained tensor gets a gradient (DDP needs
it, and the audit checks it). Both modules go through `accelerate.prepare` (gradient_sync "prepare").

Caches: the dataset caches latents (its `latent_cache`); with the text encoders frozen (from the start or
after their stop step) conds are cached per prompt, and when the prompts are few and known (no tag shuffle
or dropout) they are all made before training and the encoders leave the GPU (`move_unused_to_cpu`).

Saves: `<checkpoints>/<name>.safetensors` (or .ckpt, which A1111's safe unpickler loads) at the end, step
copies in `<run>/checkpoints/`, weights in `save_dtype`, with `modelspec.*` metadata naming the trained parts;
an optional VAE file is baked in. The self-test compares a fixed-seed image of the base model (rendered
before training) with the trained one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liandan.errors import CheckpointError, ConfigError, TrainingStopped
from liandan.formats.checkpoint import modelspec_metadata, read_metadata
from liandan.jobs import DreamBoothJob
from liandan.models.ldm_layout import TEXT_PREFIXES, UNET_PREFIX
from liandan.train.cond_cache import CondCache, frozen_text_conds
from liandan.train.diffusion_loss import batch_loss, set_unet_compiled, unet_prediction
from liandan.train.method import ParamGroup, SavedArtifact
from liandan.train.training_job import MethodContext, render_preview, run_training_job

if TYPE_CHECKING:
    from PIL import Image

    from liandan.host.base import Host
    from liandan.models.bundle import ModelBundle
    from liandan.models.conditioning import PromptEncoder
    from liandan.progress import Control, Reporter
    from liandan.train.loop import TrainResult

LOSS_CSV = "dreambooth_loss.csv"
TEXT_GROUPS = ("text_encoder", "text_encoder_2")
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STEP_KEY = "dreambooth.step"  # the step count rides in the trainable state, so a resumed run knows it
OUT_OF_MEMORY = (
    "out of GPU memory ({error}). Run `python -m liandan plan` on the job file (the tab's Plan button) "
    "for settings that fit: a smaller batch, gradient checkpointing, an 8-bit optimizer, a frozen text "
    "encoder"
)


def output_path(host: Host, job: DreamBoothJob) -> Path:
    return host.folders.checkpoints / f"{job.name}.{job.save_format}"


def resolve_vae(host: Host, vae: str) -> Path:
    """A job's `vae`: a file, or a name in A1111's models/VAE folder."""
    path = Path(vae).expanduser()
    if path.is_file():
        return path
    named = host.folders.models / "VAE" / vae
    if named.is_file():
        return named
    raise ConfigError(f"VAE {vae!r} is neither a file nor a file in {host.folders.models / 'VAE'}")


def used_text_parameters(encoder: PromptEncoder, bundle: ModelBundle) -> set[int]:
    """ids of the text-encoder parameters the conditioning depends on, found by one backward pass."""
    modules = bundle.text_encoders
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
        p.grad = None
    cond = encoder.encode(["a photo"])
    total = cond.context.float().sum() + (cond.pooled.float().sum() if cond.pooled is not None else 0)
    total.backward()
    used = {id(p) for p, _ in flags if p.grad is not None and bool(p.grad.abs().amax() > 0)}
    for p, flag in flags:
        p.grad = None
        p.requires_grad_(flag)
    return used


class DreamBoothMethod:
    """The TrainingMethod of a DreamBooth fine-tune (see the module docstring)."""

    kind = "dreambooth"
    gradient_sync = "prepare"  # a whole UNet: DDP/FSDP/DeepSpeed through accelerate

    def __init__(self, context: MethodContext, output: Path) -> None:
        self.context = context
        self.job: DreamBoothJob = context.job  # type: ignore[assignment]
        self.bundle = bundle = context.bundle
        self.name = self.job.name
        self.output = output
        self.device = device = context.device
        self.step = 0
        for module in [*bundle.text_encoders, bundle.unet, bundle.vae]:
            module.requires_grad_(False)
            module.eval()
        bundle.unet.to(device, torch.float32).requires_grad_(True)
        bundle.unet.to(memory_format=torch.channels_last)
        set_unet_compiled(bundle.unet, self.job.train.torch_compile)
        for encoder in bundle.text_encoders:  # frozen ones keep their dtype: saved as they were loaded
            encoder.to(device, torch.float32 if self.job.train_text_encoder else None)
        self.encoder = self._plain_encoder()
        self.trained_encoders = list(bundle.text_encoders) if self.job.train_text_encoder else []
        self.text_params: list[list[torch.nn.Parameter]] = []
        if self.trained_encoders:
            used = used_text_parameters(self.encoder, bundle)
            for encoder in self.trained_encoders:
                params = [p for p in encoder.parameters() if id(p) in used]
                for p in params:
                    p.requires_grad_(True)
                self.text_params.append(params)
        self.unet_call: torch.nn.Module = bundle.unet
        self.cond_cache: CondCache | None = None
        if not self.trained_encoders:
            self._freeze_text_encoders()
        self.base_image: Image.Image | None = None
        if self.job.preview.self_test:  # the "without" of the self-test: the model before training
            self.base_image = self._render(context.preview_prompt, context.preview_seed)

    # --- conditioning ----------------------------------------------------------------------------------

    @property
    def training_text(self) -> bool:
        stop = self.job.text_encoder_stop_step
        return bool(self.trained_encoders) and (stop == 0 or self.step < stop)

    def _freeze_text_encoders(self) -> None:
        """From here on conds come from the cache; all of them at once when the run's prompts are few."""
        for encoder in self.bundle.text_encoders:
            encoder.requires_grad_(False)
            encoder.eval()
        move = self.job.train.move_unused_to_cpu
        self.cond_cache = frozen_text_conds(self._plain_encoder(), self.context.dataset, self.device, move)

    def _plain_encoder(self) -> PromptEncoder:
        from liandan.models.conditioning import PromptEncoder

        return PromptEncoder(self.bundle, clip_skip=self.job.clip_skip)

    def _cond(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cond_cache is not None:
            return self.cond_cache(prompts)
        cond = self.encoder.encode(prompts)
        return cond.context, cond.pooled

    # --- TrainingMethod ----------------------------------------------------------------------------------

    def parameter_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup("unet", list(self.bundle.unet.parameters()))]
        for name, params in zip(TEXT_GROUPS, self.text_params):
            groups.append(ParamGroup(name, params, lr_scale=self.job.text_encoder_lr_scale))
        return groups

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.bundle.unet, *self.trained_encoders]

    def use_prepared_modules(self, modules: list[torch.nn.Module]) -> None:
        from liandan.models.conditioning import PromptEncoder

        self.unet_call, *encoders = modules
        if encoders:
            self.encoder = PromptEncoder(self.bundle, clip_skip=self.job.clip_skip, forward=encoders)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        context, pooled = self._cond(list(batch["prompts"]))
        return batch_loss(
            self.bundle, batch, context, pooled, unet_prediction(self.unet_call), train=self.job.train
        )

    def _named_trainables(self) -> dict[str, torch.nn.Parameter]:
        """Every trained tensor by name, also the text encoders' after their stop (resume loads them)."""
        named = {f"unet.{n}": p for n, p in self.bundle.unet.named_parameters()}
        for group, encoder, params in zip(TEXT_GROUPS, self.trained_encoders, self.text_params):
            trained = {id(p) for p in params}
            named.update({f"{group}.{n}": p for n, p in encoder.named_parameters() if id(p) in trained})
        return named

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {name: p.detach() for name, p in self._named_trainables().items()}
        state[STEP_KEY] = torch.tensor(self.step)
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self._named_trainables().items():
                p.copy_(state[name])
        self._set_step(int(state[STEP_KEY]))

    def _set_step(self, step: int) -> None:
        was_training = self.training_text
        self.step = step
        if was_training and not self.training_text:
            self._freeze_text_encoders()

    def after_optimizer_step(self, step: int) -> None:
        """At `text_encoder_stop_step` the text encoders freeze (their conds are cached from then on)."""
        self._set_step(step)

    def save(self, step: int, final: bool) -> SavedArtifact:
        from liandan.models.saving import save_checkpoint

        job = self.job
        if final:
            path = self.output
        else:
            path = self.context.run_dir / "checkpoints" / f"{self.name}-{step}.{job.save_format}"
        try:
            save_checkpoint(
                self.bundle, path, dtype=SAVE_DTYPES[job.save_dtype], metadata=self._metadata(step)
            )
        except OSError as e:
            raise CheckpointError(
                f"could not write {path} ({e.strerror or e}); nothing was written there and a file it would "
                "have replaced is unchanged. Free some disk space and run the job again to resume"
            ) from e
        return SavedArtifact([path], step, {"final": final})

    def _metadata(self, step: int) -> dict[str, str]:
        trained = self.trained_group_names()
        concepts = self.job.concepts
        base = self.context.checkpoint
        described = ", ".join(trained).replace("_", " ")
        description = f"DreamBooth of {base.title} ({described}), {step} steps, by liandan"
        metadata = modelspec_metadata(
            self.bundle,
            title=self.name,
            resolution=(self.job.data.width, self.job.data.height),
            trained=trained,
            description=description,
            trigger_phrases=[c.instance_prompt for c in concepts],
        )
        metadata["liandan.base_model"] = base.title
        metadata["liandan.base_hash"] = base.short_hash or ""
        metadata["liandan.step"] = str(step)
        return metadata

    def trained_group_names(self) -> list[str]:
        return ["unet", *TEXT_GROUPS[: len(self.text_params)]]

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        """The trained parts the file names (its metadata) whose weights it holds (its keys); a .ckpt
        has no metadata: the parts whose keys it holds."""
        path = artifact.paths[0]
        keys = _checkpoint_keys(path)
        prefixes = {"unet": UNET_PREFIX}
        family = self.bundle.family
        prefixes.update(
            {g: TEXT_PREFIXES[(family, i)] for i, g in enumerate(TEXT_GROUPS[: len(self.text_params)])}
        )
        held = {group for group, prefix in prefixes.items() if any(k.startswith(prefix) for k in keys)}
        metadata = read_metadata(path)
        if "liandan.trained" in metadata:
            held &= set(metadata["liandan.trained"].split(","))
        return held

    def _render(self, prompt: str, seed: int) -> Image.Image:
        return render_preview(
            self.bundle, self.job.preview, prompt, seed, self.device, clip_skip=self.job.clip_skip
        )

    def preview(self, prompt: str, seed: int, enabled: bool) -> Image.Image:
        """The trained model, or (disabled) the base model's image rendered before training."""
        if enabled:
            return self._render(prompt, seed)
        if self.base_image is None or (prompt, seed) != (
            self.context.preview_prompt,
            self.context.preview_seed,
        ):
            raise TrainingStopped(f"no image of the base model for prompt {prompt!r} and seed {seed}")
        return self.base_image

    def close(self) -> None:
        """Nothing to undo: the bundle is this job's own copy, trained in place."""


def _checkpoint_keys(path: Path) -> set[str]:
    from liandan.models.loading import open_checkpoint

    with open_checkpoint(path) as source:
        return set(source.shapes)


def check_output(host: Host, job: DreamBoothJob) -> Path:
    """Where the checkpoint goes, checked before any model is loaded: not the model it trains from, and not
    an existing file unless `overwrite` or this job's own run resumes."""
    from liandan.train.checkpointing import find_state
    from liandan.train.training_job import find_run_dir

    output = output_path(host, job)
    if output.resolve() == host.resolve_checkpoint(job.model).path.resolve():
        raise ConfigError(f"the DreamBooth output {output} is the model it trains from; choose another name")
    run_dir = find_run_dir(job.log_dir or host.folders.logs, job.name, job.train.resume)
    resuming = job.train.resume and find_state(run_dir) is not None
    if output.exists() and not (job.overwrite or resuming):
        raise ConfigError(f"checkpoint {output} already exists; choose another name or tick overwrite")
    return output


def run_dreambooth_job(job: DreamBoothJob, host: Host, reporter: Reporter, control: Control) -> TrainResult:
    """The "dreambooth" job: fine-tune the model on the concepts, save `<checkpoints>/<name>.<format>`.
    A separate VAE is loaded before latents are cached and class images made, and is saved in the file."""
    from liandan.models.loading import load_vae_file

    output = check_output(host, job)
    vae = resolve_vae(host, job.vae) if job.vae else None
    prepare = (lambda bundle: load_vae_file(bundle, vae)) if vae else None
    try:
        return run_training_job(job, host, reporter, control, name=job.name, loss_csv_name=LOSS_CSV,
                                make_method=lambda context: DreamBoothMethod(context, output),
                                prepare_model=prepare)  # fmt: skip
    except torch.cuda.OutOfMemoryError as e:
        raise TrainingStopped(OUT_OF_MEMORY.format(error=str(e).splitlines()[0])) from e
