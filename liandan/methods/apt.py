"""APT (advanced prompt tuning, DreamArtist's method): a positive embedding `name` and a negative `name-neg`
trained together, with classifier-free guidance inside the loss.

Trainable: the vectors of both embeddings, one [n, width] parameter per text encoder each (SDXL: clip_l and
clip_g), the negative's learning rate scaled by `neg_lr_scale`. The training prompt (with `name`) and the
negative prompt `name-neg` are encoded in one text-encoder batch and denoised in ONE UNet call of twice the
batch; the guided prediction ε_neg + cfg · (ε_pos − ε_neg) is what the denoising loss compares with the
target. The scale is fixed or drawn each step from a range (`train/guidance.py`); validation batches use the
middle of the range so that every score compares alike. Optional terms, from the predicted clean latents
decoded by the (frozen) VAE with gradients: an L1 loss against the training image, and a discriminator's
score (`models/image_scorer.py`). Optional: `<image>_att.png` weights the denoising loss per latent pixel
(grey level, mean 1 per image), and an EMA of both embeddings (torch's `swa_utils`) is what gets saved.

Saved: both files in the host's embeddings folder (`<name>` and `<name>-neg`, `.pt` or `.safetensors`; SDXL
always `.safetensors`), each with a "usage" note; step copies `<run>/embeddings/<name>-<step>` and
`<name>-neg-<step>`; PNG cards of both (SD1/SD2); one `.optim` sidecar beside the positive whose checksum
covers both embeddings' vectors. An existing pair continues from the positive's step; one file of a pair
without the other is refused unless `overwrite`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from liandan.errors import ConfigError, DatasetError
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
from liandan.jobs import AptJob
from liandan.models.embedding_vectors import TrainableEmbedding, load_for_model, new_embedding
from liandan.train.diffusion_loss import batch_added_conditioning, diffusion_loss, freeze_for_training
from liandan.train.guidance import parse_cfg_scale
from liandan.train.method import ParamGroup, SavedArtifact
from liandan.train.optimizer_sidecar import OptimizerSidecar
from liandan.train.training_job import MethodContext, render_preview, run_training_job

if TYPE_CHECKING:
    from PIL import Image

    from liandan.data.dataset import DatasetImage
    from liandan.host.base import Host
    from liandan.progress import Control, Reporter
    from liandan.train.loop import TrainResult

LOSS_CSV = "apt_loss.csv"
SIZE_KEYS = ("original_size", "crop_top_left", "target_size")  # SDXL's per-image size conditioning


def usage_note(name: str, neg_name: str) -> str:
    return (
        f"APT pair: put {name} in the prompt and {neg_name} in the negative prompt; "
        "a CFG scale of about 3-5 suits it"
    )


class Apt:
    """The TrainingMethod of an APT job (see the module docstring)."""

    kind = "apt"
    gradient_sync = "all_reduce"  # vectors spliced into prompts, as in textual inversion

    def __init__(
        self, context: MethodContext, positive: Embedding, negative: Embedding, paths: tuple[Path, Path]
    ) -> None:
        job: AptJob = context.job  # type: ignore[assignment]
        self.decodes = job.reconstruction_weight > 0 or job.discriminator is not None
        if self.decodes and getattr(context.bundle, "vae", None) is None:
            raise ConfigError(
                "the reconstruction loss and the discriminator decode the prediction with the VAE, and this "
                "model has none: set reconstruction_weight = 0 and no discriminator, or use a checkpoint "
                "with a VAE"
            )
        self.job, self.context, self.bundle = job, context, context.bundle
        self.name, self.neg_name = job.name, job.neg_name
        self.final_paths = paths
        self.start_step = positive.step or 0
        self.short_hash = context.checkpoint.short_hash
        self.checkpoint_name = context.checkpoint.path.stem
        self.sidecar = OptimizerSidecar(context.say)
        self.cfg = parse_cfg_scale(job.cfg_scale)
        self.last_preview: Image.Image | None = None

        from liandan.models.conditioning import PromptEncoder

        freeze_for_training(self.bundle, context.device, job.train)
        self.pair = torch.nn.ModuleDict(
            {
                "positive": TrainableEmbedding(positive.vectors),
                "negative": TrainableEmbedding(negative.vectors),
            }
        ).to(context.device)
        self.ema = None
        if job.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.pair, multi_avg_fn=get_ema_multi_avg_fn(job.ema_decay))
        self.encoder = PromptEncoder(self.bundle, clip_skip=job.clip_skip)
        if self.decodes:  # decoded with gradients, every step
            self.bundle.vae.to(context.device, torch.float32)
        self.scorer = None
        if job.discriminator is not None:
            from liandan.models.image_scorer import load_image_scorer

            self.scorer = load_image_scorer(job.discriminator, job.discriminator_arch).to(context.device)
        self.images: dict[str, DatasetImage] = {
            str(image.record.path): image for image in context.dataset.images
        }
        self._pixels: dict[tuple[str, bool], torch.Tensor] = {}
        self._attention: dict[tuple[str, bool], torch.Tensor] = {}
        if job.attention_maps:
            self._report_attention_maps()
        self._check_prompts_use_name()

    def _check_prompts_use_name(self) -> None:
        dataset = self.context.dataset
        prompts = [dataset.prompt(i, 0) for i in range(min(len(dataset), 16))]
        embeddings = self._embeddings(self.pair)
        if not any(self.encoder.tokenize(p, embeddings).chunks[0].fixes for p in prompts):
            raise DatasetError(
                f"the prompt template {self.job.data.template!r} never puts the embedding's name "
                f"{self.name!r} in a prompt (no [name] line), so nothing would train; e.g. {prompts[0]!r}"
            )

    def _report_attention_maps(self) -> None:
        from liandan.data.image_folder import attention_map_path

        found = sum(attention_map_path(Path(path)).is_file() for path in self.images)
        self.context.say(
            f"attention maps: {found} of {len(self.images)} images have an <image>_att.png "
            "(the others weigh every pixel alike)"
        )

    # --- what trains ---

    def _embeddings(self, pair: torch.nn.Module) -> dict[str, Any]:
        return {
            self.name: pair["positive"].as_prompt_embedding(),
            self.neg_name: pair["negative"].as_prompt_embedding(),
        }

    def parameter_groups(self) -> list[ParamGroup]:
        return [
            ParamGroup("positive", list(self.pair["positive"].params)),
            ParamGroup("negative", list(self.pair["negative"].params), lr_scale=self.job.neg_lr_scale),
        ]

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.pair]

    def attach_optimizer(self, optimizer: Any) -> int:
        """Keep the optimizer for the `.optim` sidecar; start from the pair's own sidecar when its checksum
        matches these vectors; continue from the positive's step."""
        saved = None
        if self.start_step > 0 and self.final_paths[0].is_file():
            saved = load_embedding_optimizer(self.final_paths[0], self._checksummed(self.pair))
        self.sidecar.attach(optimizer, saved, self.final_paths[0])
        return self.start_step

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        count = len(batch["prompts"])
        cond = self.encoder.encode([*batch["prompts"], *[self.neg_name] * count], self._embeddings(self.pair))
        sizes = {key: torch.cat([batch[key]] * 2) for key in SIZE_KEYS} if self.bundle.is_sdxl else {}
        validating = batch.get("noise") is not None
        # the global generator, as the noise: a resumed run restores it and draws the same scales
        cfg = self.cfg.at(0.5 if validating else float(torch.rand(())))
        unet = self.bundle.unet
        seen: dict[str, torch.Tensor] = {}

        def guided(
            noisy: torch.Tensor,
            timesteps: torch.Tensor,
            context: torch.Tensor,
            added: dict[str, torch.Tensor] | None,
        ) -> torch.Tensor:
            kwargs = {} if added is None else {"added_cond_kwargs": added}
            both = unet(
                torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]), context, **kwargs
            ).sample
            positive, negative = both.float().chunk(2)
            prediction = negative + cfg * (positive - negative)
            seen.update(noisy=noisy, timesteps=timesteps, prediction=prediction)
            return prediction

        loss = diffusion_loss(
            self.bundle,
            batch["latents"],
            cond.context,
            added_cond_kwargs=batch_added_conditioning(self.bundle, {**batch, **sizes}, cond),
            loss_weight=self._loss_weight(batch),
            predict=guided,
            noise=batch.get("noise"),
            timesteps=batch.get("timesteps"),
            train=self.job.train,
        )
        if self.decodes:
            loss = loss + self._image_losses(batch, seen["noisy"], seen["timesteps"], seen["prediction"])
        return loss

    def _loss_weight(self, batch: dict[str, Any]) -> torch.Tensor | None:
        weight = batch.get("loss_weight")
        if not self.job.attention_maps:
            return weight
        size = tuple(batch["latents"].shape[-2:])
        maps = torch.stack(
            [self._attention_weight(p, bool(f), size) for p, f in zip(batch["paths"], batch["flipped"])]
        )
        return maps if weight is None else maps * weight

    def _attention_weight(self, path: str, flipped: bool, latent_size: tuple[int, int]) -> torch.Tensor:
        """[1, h, w]: the grey level of `<image>_att.png`, cropped and flipped as the image, mean 1."""
        key = (path, flipped)
        if key not in self._attention:
            from PIL import Image

            from liandan.data.image_folder import attention_map_path, open_image
            from liandan.data.pixels import crop_and_flip

            h, w = latent_size
            att = attention_map_path(Path(path))
            if not att.is_file():
                self._attention[key] = torch.ones(1, h, w)
            else:
                geometry = self.images[path].geometry
                grey = open_image(att).convert("L").resize(geometry.original_size, Image.BICUBIC)
                grey = crop_and_flip(grey, geometry, flipped).resize((w, h), Image.BOX)
                weight = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255).unsqueeze(0)
                mean = weight.mean()
                self._attention[key] = weight / mean if mean > 0 else torch.ones(1, h, w)
        return self._attention[key]

    def _image_losses(
        self, batch: dict[str, Any], noisy: torch.Tensor, timesteps: torch.Tensor, prediction: torch.Tensor
    ) -> torch.Tensor:
        """The reconstruction and discriminator terms, on the VAE decoding of the predicted clean latents."""
        vae, job = self.bundle.vae, self.job
        alphas = self.bundle.noise_scheduler.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1)
        noisy = noisy.float()
        if self.bundle.prediction_type == "v_prediction":
            clean = alphas.sqrt() * noisy - (1 - alphas).sqrt() * prediction
        else:
            clean = (noisy - (1 - alphas).sqrt() * prediction) / alphas.sqrt()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        images = vae.decode((clean / self.bundle.latent_scaling + shift).to(vae.device, torch.float32)).sample
        loss = torch.zeros((), device=images.device)
        if job.reconstruction_weight > 0:
            target = torch.stack([self._target(p, bool(f)) for p, f in zip(batch["paths"], batch["flipped"])])
            loss = loss + job.reconstruction_weight * F.l1_loss(images, target.to(images.device))
        if self.scorer is not None:
            loss = loss + job.discriminator_weight * F.softplus(-self.scorer(images)).mean()
        return loss

    def _target(self, path: str, flipped: bool) -> torch.Tensor:
        """The training image's pixels in [-1, 1], cropped and flipped as its latents were."""
        key = (path, flipped)
        if key not in self._pixels:
            from liandan.data.image_folder import open_image
            from liandan.data.pixels import crop_and_flip, to_pixel_tensor

            image = crop_and_flip(open_image(Path(path)), self.images[path].geometry, flipped)
            self._pixels[key] = to_pixel_tensor(image)
        return self._pixels[key]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"pair.{k}": v.detach().clone() for k, v in self.pair.state_dict().items()}
        if self.ema is not None:
            state.update({f"ema.{k}": v.detach().clone() for k, v in self.ema.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pair.load_state_dict(
            {k.removeprefix("pair."): v for k, v in state.items() if k.startswith("pair.")}
        )
        if self.ema is not None:
            self.ema.load_state_dict(
                {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
            )

    def after_optimizer_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.pair)

    def close(self) -> None:
        """Nothing: the vectors are spliced into each prompt, the model itself is not changed."""

    # --- what is saved ---

    def _saved_pair(self) -> torch.nn.Module:
        """What the files hold: the EMA of the vectors when it is on, else the vectors themselves."""
        return self.pair if self.ema is None else self.ema.module

    def _embedding(self, which: str, name: str, step: int, names: tuple[str, str]) -> Embedding:
        return Embedding(
            name=name,
            vectors=self._saved_pair()[which].detached(),
            step=step,
            sd_checkpoint=self.short_hash,
            sd_checkpoint_name=self.checkpoint_name,
            usage=usage_note(*names),
        )

    def _checksummed(self, pair: torch.nn.Module) -> Embedding:
        """Both embeddings' vectors as one, for the `.optim` checksum (the sidecar holds both groups)."""
        vectors = {
            f"{which}.{k}": v for which in ("positive", "negative") for k, v in pair[which].detached().items()
        }
        return Embedding(name=self.name, vectors=vectors)

    def save(self, step: int, final: bool) -> SavedArtifact:
        run_dir = self.context.run_dir
        if final:
            names, paths = (self.name, self.neg_name), self.final_paths
        else:  # A1111 names an embedding by its file stem: a step copy is a pair of its own
            names = (f"{self.name}-{step}", f"{self.neg_name}-{step}")
            paths = tuple(run_dir / "embeddings" / f"{n}{p.suffix}" for n, p in zip(names, self.final_paths))
        pair = [self._embedding(which, n, step, names) for which, n in zip(("positive", "negative"), names)]
        written = [write_embedding(embedding, path) for embedding, path in zip(pair, paths)]
        state = self.sidecar.state_dict()
        if state is not None:
            written.append(save_embedding_optimizer(paths[0], self._checksummed(self._saved_pair()), state))
        if self.job.save_png_cards and not pair[0].is_sdxl:  # A1111 cards hold one tensor
            card = self.last_preview or self.preview(self._card_prompt(), self.job.train.seed, enabled=True)
            for which, base in zip(("positive", "negative"), (self.name, self.neg_name)):
                embedding = self._embedding(which, f"{base}-{step}", step, names)  # A1111's card names
                card_path = run_dir / "image_embeddings" / f"{embedding.name}.png"
                written.append(
                    save_embedding_card(
                        embedding, card, card_path, self.checkpoint_name, self.short_hash or ""
                    )
                )
        return SavedArtifact(written, step, {"final": True} if final else {})

    def saved_groups(self, artifact: SavedArtifact) -> set[str]:
        """Each of "positive" and "negative" whose file holds vectors of every text encoder it trains."""
        groups = set()
        for which, path in zip(("positive", "negative"), artifact.paths[:2]):
            module = self.pair[which]
            shapes = {key: tuple(p.shape) for key, p in zip(module.keys, module.params)}
            if {k: tuple(v.shape) for k, v in load_embedding(path).vectors.items()} == shapes:
                groups.add(which)
        return groups

    def _card_prompt(self) -> str:
        return self.job.preview.prompt or self.context.dataset.prompt(0, 0)

    def preview(self, prompt: str, seed: int, enabled: bool) -> Image.Image:
        """With the pair: the positive where the prompt names it, `name-neg` added to the negative prompt."""
        preview = self.job.preview
        embeddings = None
        if enabled:
            embeddings = self._embeddings(self._saved_pair())
            negative = ", ".join(p for p in (preview.negative_prompt, self.neg_name) if p)
            preview = preview.replace(negative_prompt=negative)
        image = render_preview(self.bundle, preview, prompt, seed, self.context.device,
                               clip_skip=self.job.clip_skip, embeddings=embeddings)  # fmt: skip
        if enabled:
            self.last_preview = image
        return image


def new_pair(bundle: Any, job: AptJob) -> tuple[Embedding, Embedding]:
    """A fresh pair from the job's init texts and vector counts (step 0), each with its usage note."""
    pair = (
        new_embedding(bundle, job.name, job.init_text, job.vectors),
        new_embedding(bundle, job.neg_name, job.neg_init_text, job.neg_vectors),
    )
    for embedding in pair:
        embedding.usage = usage_note(job.name, job.neg_name)
    return pair


def prepare_pair(context: MethodContext) -> tuple[Embedding, Embedding, tuple[Path, Path]]:
    """The pair to train and where its files go: an existing pair (unless `overwrite`), checked against the
    model family, or a new one written at once (step 0). One file of a pair without the other is refused."""
    job: AptJob = context.job  # type: ignore[assignment]
    bundle, folder = context.bundle, context.host.folders.embeddings
    names = (job.name, job.neg_name)
    existing = [existing_embedding_file(folder, name) for name in names]
    targets = (
        embedding_file(folder, job.name, job.file_format, bundle.is_sdxl),
        embedding_file(folder, job.neg_name, job.file_format, bundle.is_sdxl),
    )
    if job.overwrite or existing == [None, None]:
        positive, negative = new_pair(bundle, job)
        if context.is_main:  # every rank builds the same vectors; one writes them
            for embedding, path in zip((positive, negative), targets):
                write_embedding(embedding, path)
        return positive, negative, targets
    if None in existing:
        there, missing = (names[0], names[1]) if existing[0] else (names[1], names[0])
        raise ConfigError(
            f"embedding {there!r} exists but {missing!r} does not: an APT pair is trained together; tick "
            "Overwrite to start a new pair of that name, or choose another name"
        )
    paths = tuple(existing)
    unwritable = [
        p for p in paths if p.suffix not in WRITTEN_SUFFIXES or (bundle.is_sdxl and p.suffix == ".pt")
    ]
    if unwritable:
        raise ConfigError(
            f"{unwritable[0]} cannot be written back in its own format; tick Overwrite to start the pair anew"
        )
    positive, negative = (load_for_model(path, bundle) for path in paths)
    positive.name, negative.name = names
    return positive, negative, paths  # type: ignore[return-value]


def create_apt_pair(host: Host, job: AptJob) -> Path:
    """Create `<name>` and `<name>-neg` at step 0 for the job's model, without training; refuses either name
    when it exists unless `job.overwrite`. Returns the positive's path."""
    folder = host.folders.embeddings
    if not job.overwrite:
        refuse_existing(folder, job.name)
        refuse_existing(folder, job.neg_name)
    checkpoint = host.resolve_checkpoint(job.model)
    with host.model_for_training(checkpoint.path) as bundle:
        paths = [
            write_embedding(
                embedding, embedding_file(folder, embedding.name, job.file_format, bundle.is_sdxl)
            )
            for embedding in new_pair(bundle, job)
        ]
    host.refresh("embeddings")
    return paths[0]


def run_apt_job(spec: AptJob, host: Host, reporter: Reporter, control: Control) -> TrainResult:
    """The runner of `apt` jobs (CLI, UI, REST)."""
    if spec.overwrite:  # a fresh pair must not pick up an earlier run's saved state
        spec = spec.replace(train=spec.train.replace(resume=False))

    def make_method(context: MethodContext) -> Apt:
        return Apt(context, *prepare_pair(context))

    return run_training_job(
        spec, host, reporter, control, name=spec.name, loss_csv_name=LOSS_CSV, make_method=make_method
    )
