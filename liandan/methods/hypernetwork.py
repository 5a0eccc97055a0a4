"""Hypernetworks: create one with A1111's options, and train it through the one loop.

Trainable: the hypernetwork's K/V modules only; the UNet, text encoders and VAE are frozen in eval mode. The
hypernetwork is installed on the UNet's attention layers (`install_kv_transforms`) for the job and removed
afterwards. Conditioning is computed without gradient and cached per prompt string, as A1111 precomputes
conds: every prompt before the first step when the template's lines and the captions make few. Saves: the
final file in `models/hypernetworks/<name>.pt`, step copies in `<run>/hypernetworks/`, each with A1111's
`.optim` sidecar (optimizer name + state).

Decisions where A1111 leaves room:
- `sizes` empty: the attention widths the model really has. For real checkpoints that is exactly
  `default_sizes(family)` (SD1 768, 320, 640, 1280; SD2 1024, 320, 640, 1280 - 768 never occurs in SD2;
  SDXL 2048, 640, 1280); for the tiny test models it is their own small widths.
- `dropout_structure` empty: no dropout when `use_dropout` is off (A1111's create writes zeros), otherwise
  A1111's legacy default for the layer structure (`[0, 0.3, ..., 0.3 if last_layer_dropout else 0, 0]`).
  A non-empty structure is used as written; `last_layer_dropout` then only describes it.
- Sizes the model has none of are refused when creating; an existing file whose widths the model lacks
  (another family) is refused for training with a FormatError (A1111 would silently skip those modules).
- An existing `<name>.pt` is trained further (its step counts on) unless `overwrite`; a resumable run of the
  job (its full-state checkpoint) always wins over `overwrite`: set `train.resume = false` to start over.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liandan.data.dataset import derive_seed
from liandan.errors import ConfigError
from liandan.formats.hypernetwork import (
    load_hypernetwork,
    load_hypernetwork_optimizer,
    save_hypernetwork,
    save_hypernetwork_optimizer,
)
from liandan.jobs import HypernetworkJob
from liandan.models.hypernetwork_modules import (
    Hypernetwork,
    check_sizes,
    parse_dropout_structure,
    parse_layer_structure,
)
from liandan.train.cond_cache import frozen_text_conds
from liandan.train.diffusion_loss import batch_loss, freeze_for_training
from liandan.train.method import ParamGroup, SavedArtifact
from liandan.train.optimizer_sidecar import OptimizerSidecar
from liandan.train.training_job import MethodContext, render_preview, run_training_job

if TYPE_CHECKING:
    from PIL import Image

    from liandan.host.base import Host
    from liandan.models.bundle import ModelBundle
    from liandan.progress import Control, Reporter
    from liandan.train.loop import TrainResult

LOSS_CSV = "hypernetwork_loss.csv"


def model_attention_widths(bundle: ModelBundle) -> list[int]:
    """The K/V input widths of the UNet's attention layers: what hypernetwork `sizes` can name."""
    from liandan.models.attention_hooks import attention_layers, kv_input_width

    return sorted({kv_input_width(attn) for attn in attention_layers(bundle.unet).values()})


def build_hypernetwork(job: HypernetworkJob, model_widths: Sequence[int]) -> Hypernetwork:
    """A fresh hypernetwork with the job's options (valid: the spec checked them), for a model whose
    attention widths are `model_widths`."""
    layers = parse_layer_structure(job.layer_structure)
    sizes = list(job.sizes) or list(model_widths)
    check_sizes(sizes, model_widths)
    dropout = parse_dropout_structure(job.dropout_structure, layers, job.use_dropout, job.last_layer_dropout)
    # the initial weights come from the job's seed, so a run repeats exactly (A1111 leaves them to chance)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(job.train.seed, "hypernetwork init", job.name))
        return Hypernetwork(
            name=job.name,
            sizes=sizes,
            layer_structure=layers,
            activation=job.activation,
            weight_init=job.weight_init,
            add_layer_norm=job.layer_norm,
            activate_output=job.activate_output,
            use_dropout=job.use_dropout,
            dropout_structure=dropout,
        )


def create_hypernetwork(host: Host, job: HypernetworkJob) -> Path:
    """A1111's "Create hypernetwork": write `<hypernetworks>/<name>.pt` at step 0 for the job's model.

    Refuses to replace an existing file unless `job.overwrite`."""
    path = host.folders.hypernetworks / f"{job.name}.pt"
    if path.exists() and not job.overwrite:
        raise ConfigError(f"hypernetwork {path} already exists; tick overwrite to replace it")
    checkpoint = host.resolve_checkpoint(job.model)
    with host.model_for_training(checkpoint.path) as bundle:
        hypernetwork = build_hypernetwork(job, model_attention_widths(bundle))
    save_hypernetwork(hypernetwork, path)
    host.refresh("hypernetworks")
    return path


class HypernetworkMethod:
    """The TrainingMethod of a hypernetwork (see the module docstring)."""

    kind = "hypernetwork"
    gradient_sync = "all_reduce"  # runs inside the UNet's attention, never through its own forward

    def __init__(
        self,
        context: MethodContext,
        hypernetwork: Hypernetwork,
        existing_file: Path | None = None,
    ) -> None:
        from liandan.models.attention_hooks import install_kv_transforms
        from liandan.models.conditioning import PromptEncoder

        self.context = context
        self.job: HypernetworkJob = context.job  # type: ignore[assignment]
        self.bundle = context.bundle
        self.name = hypernetwork.name
        self.start_step = hypernetwork.step  # a file trained earlier counts on from its step, as in A1111
        self.sidecar = OptimizerSidecar(context.say)
        self.existing_file = existing_file  # the file trained earlier, whose `.optim` may be reused
        self.device = context.device
        freeze_for_training(self.bundle, self.device, self.job.train)  # the hypernetwork stays float32
        self.hypernetwork = hypernetwork.to(self.device)
        self.hypernetwork.requires_grad_(True)
        self.hypernetwork.train()  # dropout on; strength is 1 while training, as in A1111
        encoder = PromptEncoder(self.bundle, clip_skip=self.job.clip_skip)
        move = self.job.train.move_unused_to_cpu
        self._cond = frozen_text_conds(encoder, context.dataset, self.device, move)
        self.handle = install_kv_transforms(self.bundle.unet, [self.hypernetwork])

    # --- TrainingMethod ----------------------------------------------------------------------------------

    def parameter_groups(self) -> list[ParamGroup]:
        return [ParamGroup("hypernetwork", list(self.hypernetwork.parameters()))]

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.hypernetwork]

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        context, pooled = self._cond(list(batch["prompts"]))
        return batch_loss(self.bundle, batch, context, pooled, train=self.job.train)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.hypernetwork.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.hypernetwork.load_state_dict(state)

    def attach_optimizer(self, optimizer: Any) -> int:
        """The loop's hook: keep the optimizer for `.optim` sidecars and, for a file trained earlier, start
        from its A1111 sidecar when that belongs to this file and this optimizer."""
        saved = None
        if self.existing_file is not None:
            name, state = load_hypernetwork_optimizer(self.existing_file)
            saved = state if name == self.job.train.optimizer else None
        self.sidecar.attach(optimizer, saved, self.existing_file)
        return self.start_step

    def after_optimizer_step(self, step: int) -> None:
        """Nothing to restore: every hypernetwork weight trains."""

    def save(self, step: int, final: bool) -> SavedArtifact:
        hypernetwork = self.hypernetwork
        hypernetwork.step = step
        hypernetwork.sd_checkpoint = self.context.checkpoint.short_hash
        hypernetwork.sd_checkpoint_name = self.context.checkpoint.path.stem
        if final:
            path = self.context.host.folders.hypernetworks / f"{self.name}.pt"
        else:
            path = self.context.run_dir / "hypernetworks" / f"{self.name}-{hypernetwork.step}.pt"
        save_hypernetwork(hypernetwork, path)
        paths = [path]
        state = self.sidecar.state_dict()
        if state is not None:
            paths.append(save_hypernetwork_optimizer(path, self.job.train.optimizer, state))
        return SavedArtifact(paths, step, {"final": final})

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        """The group "hypernetwork" when the file holds a module pair for every width this one trains."""
        saved = load_hypernetwork(artifact.paths[0])
        return {"hypernetwork"} if sorted(saved.sizes) == sorted(self.hypernetwork.sizes) else set()

    def preview(self, prompt: str, seed: int, enabled: bool) -> Image.Image:
        """A fixed-seed image with the hypernetwork at strength 1 (eval: no dropout) or not installed."""
        from liandan.models.attention_hooks import install_kv_transforms

        self.hypernetwork.eval()
        self.hypernetwork.strength = 1.0
        if not enabled:
            self.handle.remove()
        try:
            return render_preview(
                self.bundle, self.job.preview, prompt, seed, self.device, clip_skip=self.job.clip_skip
            )
        finally:
            if not enabled:
                self.handle = install_kv_transforms(self.bundle.unet, [self.hypernetwork])

    def close(self) -> None:
        """Take the hypernetwork off the UNet."""
        self.handle.remove()


def make_hypernetwork_method(context: MethodContext) -> HypernetworkMethod:
    """Load the existing hypernetwork (train further) or create one, then wrap it for the loop."""
    from liandan.train.checkpointing import find_state

    job: HypernetworkJob = context.job  # type: ignore[assignment]
    widths = model_attention_widths(context.bundle)
    path = context.host.folders.hypernetworks / f"{job.name}.pt"
    resuming = job.train.resume and find_state(context.run_dir) is not None
    if path.is_file() and (resuming or not job.overwrite):
        hypernetwork = load_hypernetwork(path, widths)
        if hypernetwork.name != job.name:  # A1111 names a hypernetwork by its file
            hypernetwork.name = job.name
        existing = path
    else:
        hypernetwork = build_hypernetwork(job, widths)
        existing = None
    return HypernetworkMethod(context, hypernetwork, existing_file=existing)


def run_hypernetwork_job(
    job: HypernetworkJob, host: Host, reporter: Reporter, control: Control
) -> TrainResult:
    """The "hypernetwork" job: create or load `<name>.pt`, train it, save it where A1111 finds it."""
    return run_training_job(
        job,
        host,
        reporter,
        control,
        name=job.name,
        loss_csv_name=LOSS_CSV,
        make_method=make_hypernetwork_method,
    )
