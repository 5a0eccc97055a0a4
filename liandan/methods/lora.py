"""LoRA and the LyCORIS family (LoCon, LoHa, LoKr, DoRA), trained through the one loop.

Trainable: the network's modules only (models/lora_injection.py), injected into the frozen UNet and, when
`text_encoder_lr_scale` > 0, into the text encoders (both, for SDXL) as a group of its own learning rate;
with frozen text encoders the conds are cached per prompt. The network is taken off the model when the job
ends, however it ends. Data: DreamBooth's concepts (instance images, and class images for prior
preservation when a concept has a class folder) or the `data`/`extra_data` folders.

Several processes: gradient_sync "all_reduce". The network's modules run inside the UNet's and text
encoders' own forward (their layers' forward is wrapped), never through a forward of the network module,
so a DDP wrapper around it would see no forward; the trainable tensors are a few MB, which one flat
all-reduce per step moves cheaply (as for hypernetworks).

Saved: `<lora folder>/<name>.safetensors` (the key layout the WebUI's Lora extension reads, see
formats/lora.py) with kohya's `ss_*` metadata and `modelspec.*`, in `save_precision`; step copies in
`<run>/Lora/<name>-<step>.safetensors`. An existing file is replaced only with `overwrite` (which starts
over) or when this job's run resumes. Previews render with the network on or off (the self-test compares
them).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liandan.errors import ConfigError
from liandan.formats.lora import LoraFile, model_metadata, network_metadata, read_lora, write_lora
from liandan.jobs import LoraJob
from liandan.models.lora_injection import LoraNetwork
from liandan.train.cond_cache import frozen_text_conds
from liandan.train.diffusion_loss import batch_loss, freeze_for_training
from liandan.train.method import ParamGroup, SavedArtifact
from liandan.train.training_job import MethodContext, render_preview, run_training_job

if TYPE_CHECKING:
    from PIL import Image

    from liandan.host.base import Host
    from liandan.progress import Control, Reporter
    from liandan.train.loop import TrainResult

LOSS_CSV = "lora_loss.csv"
GROUPS = {"unet": "lora_unet_", "text_encoder": "lora_te"}  # parameter group -> its keys' prefix


def lora_path(host: Host, name: str) -> Path:
    return host.folders.lora / f"{name}.safetensors"


class LoraMethod:
    """The TrainingMethod of a LoRA job (see the module docstring)."""

    kind = "lora"
    gradient_sync = "all_reduce"  # the modules run inside the model's own forward (module docstring)

    def __init__(self, context: MethodContext) -> None:
        from liandan.models.conditioning import PromptEncoder

        self.context = context
        self.job: LoraJob = context.job  # type: ignore[assignment]
        self.bundle = context.bundle
        self.name = self.job.name
        self.trains_text = self.job.text_encoder_lr_scale > 0
        self.started_at = int(time.time())
        self.session_id = random.randrange(2**31)
        freeze_for_training(self.bundle, context.device, self.job.train)
        with torch.random.fork_rng(devices=[]):  # the same initial network in every run of the job
            torch.manual_seed(self.job.train.seed)
            self.network = LoraNetwork(self.bundle, self.job.network, text_encoders=self.trains_text)
        self.network.to(context.device)
        self.network.apply()
        self.encoder = PromptEncoder(self.bundle, clip_skip=self.job.clip_skip)
        self.cond_cache = None
        if not self.trains_text:
            move = self.job.train.move_unused_to_cpu
            self.cond_cache = frozen_text_conds(self.encoder, context.dataset, context.device, move)
        context.say(
            f"{self.job.network.type}: {len(self.network.networks)} layers, rank {self.job.network.rank}"
        )

    # --- what trains ---

    def parameter_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup("unet", self.network.component_parameters("unet"))]
        if self.trains_text:
            params = self.network.component_parameters("text_encoder")
            groups.append(ParamGroup("text_encoder", params, lr_scale=self.job.text_encoder_lr_scale))
        return groups

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.network]

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        prompts = list(batch["prompts"])
        if self.cond_cache is not None:
            context, pooled = self.cond_cache(prompts)
        else:
            cond = self.encoder.encode(prompts)
            context, pooled = cond.context, cond.pooled
        return batch_loss(self.bundle, batch, context, pooled, train=self.job.train)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.network.networks.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.network.networks.load_state_dict(state)

    def after_optimizer_step(self, step: int) -> None:
        """Nothing: every tensor of the network trains."""

    def close(self) -> None:
        """Take the network off the model: its layers compute exactly what they did before."""
        self.network.remove()

    # --- what is saved ---

    def _metadata(self, step: int) -> dict[str, str]:
        job, context, spec = self.job, self.context, self.job.network
        dataset = context.dataset
        args: dict[str, object] = {"algo": spec.type, "targets": spec.targets}
        if spec.type in ("locon", "loha", "lokr"):
            args.update(conv_dim=spec.conv_rank, conv_alpha=spec.conv_alpha)
        if spec.type == "dora":
            args["dora_wd"] = True
        if spec.block_ranks:
            args["block_ranks"] = spec.block_ranks
        args.update(dropout=spec.dropout, rank_dropout=spec.rank_dropout, module_dropout=spec.module_dropout)
        tags: dict[str, Counter[str]] = {}
        dirs: dict[str, dict[str, int]] = {}
        for part in dataset.parts:
            folder = f"{part.spec.repeats}_{part.spec.folder.name}"
            counts = tags.setdefault(folder, Counter())
            for image in part.images:
                counts.update(tag.strip() for tag in image.caption.split(",") if tag.strip())
            dirs[folder] = {"n_repeats": part.spec.repeats, "img_count": len(part.images)}
        batches = max(1, len(dataset.batch_plan(0)))
        train = job.train
        return {
            **model_metadata(
                self.bundle.family, self.bundle.prediction_type, self.name, job.data.width, job.data.height
            ),
            **network_metadata(spec.type, spec.rank, spec.alpha, args),
            "ss_output_name": self.name,
            "ss_session_id": str(self.session_id),
            "ss_training_started_at": str(self.started_at),
            "ss_training_finished_at": str(int(time.time())),
            "ss_steps": str(step),
            "ss_max_train_steps": str(train.max_steps),
            "ss_epoch": str(step * train.gradient_accumulation // batches),
            "ss_num_train_images": str(sum(len(part.images) * part.spec.repeats for part in dataset.parts)),
            "ss_tag_frequency": json.dumps({folder: dict(counts) for folder, counts in tags.items()}),
            "ss_dataset_dirs": json.dumps(dirs),
            "ss_learning_rate": train.learn_rate,
            "ss_unet_lr": train.learn_rate,
            "ss_text_encoder_lr": _scaled_rate(train.learn_rate, job.text_encoder_lr_scale),
            "ss_network_dropout": str(spec.dropout),
            "ss_optimizer": train.optimizer,
            "ss_lr_scheduler": train.lr_scheduler,
            "ss_lr_warmup_steps": str(train.lr_warmup_steps),
            "ss_batch_size_per_device": str(train.batch_size),
            "ss_gradient_accumulation_steps": str(train.gradient_accumulation),
            "ss_mixed_precision": train.mixed_precision,
            "ss_seed": str(train.seed),
            "ss_clip_skip": str(job.clip_skip),
            "ss_sd_model_name": context.checkpoint.path.name,
            "ss_sd_model_hash": context.checkpoint.short_hash or "",
            "ss_training_comment": f"trained with liandan ({self.job.kind})",
        }

    def save(self, step: int, final: bool) -> SavedArtifact:
        if final:
            path = lora_path(self.context.host, self.name)
        else:
            path = self.context.run_dir / "Lora" / f"{self.name}-{step}.safetensors"
        lora = LoraFile(self.network.file_state(), self._metadata(step))
        write_lora(path, lora, self.job.save_precision)
        return SavedArtifact([path], step, {"final": final})

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        """Each group whose modules the file holds, every one of them (its keys read back)."""
        saved = set(read_lora(artifact.paths[0]).tensors)
        trained = set(self.network.file_state())
        return {
            group
            for group, prefix in GROUPS.items()
            if {k for k in trained if k.startswith(prefix)} <= saved
            and any(k.startswith(prefix) for k in saved)
        }

    def preview(self, prompt: str, seed: int, enabled: bool) -> Image.Image:
        """A fixed-seed image with the network on (no dropout) or off."""
        training = self.network.training
        self.network.eval()
        if not enabled:
            self.network.remove()
        try:
            return render_preview(
                self.bundle, self.job.preview, prompt, seed, self.context.device, clip_skip=self.job.clip_skip
            )
        finally:
            self.network.apply()
            self.network.train(training)


def _scaled_rate(rate: str, scale: float) -> str:
    """A learning rate times `scale`; a schedule ("0.1:500, 0.01") is written with its scale."""
    try:
        return str(float(rate) * scale)
    except ValueError:
        return f"({rate}) x {scale}"


def make_lora_method(context: MethodContext) -> LoraMethod:
    """The job's method; an existing file of its name is refused unless `overwrite` or this run resumes."""
    from liandan.train.checkpointing import find_state

    job: LoraJob = context.job  # type: ignore[assignment]
    path = lora_path(context.host, job.name)
    resuming = job.train.resume and find_state(context.run_dir) is not None
    if path.exists() and not (job.overwrite or resuming):
        raise ConfigError(f"LoRA {path} already exists; tick overwrite to replace it, or choose another name")
    return LoraMethod(context)


def run_lora_job(job: LoraJob, host: Host, reporter: Reporter, control: Control) -> TrainResult:
    """The "lora" job: train the network, save it where the WebUI's Lora extension finds it."""
    if job.overwrite:  # a new network must not pick up an earlier run's saved state
        job = job.replace(train=job.train.replace(resume=False))
    return run_training_job(
        job, host, reporter, control, name=job.name, loss_csv_name=LOSS_CSV, make_method=make_lora_method
    )
