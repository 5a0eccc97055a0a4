"""Typed job specs: the one description of a job, identical from the UI, the CLI, TOML files and REST.

Each job kind is a spec (liandan/spec.py: validated once, on construction) made of the sections every
training job shares (train, data, preview) and its own settings. Job files are TOML or JSON with a `kind`
and a `spec_version`. Every output gets the spec saved beside it as JSON, with dataset hashes, library
versions and seeds (`provenance`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from liandan.errors import ConfigError
from liandan.spec import Spec, bounded, check_name, resolve_paths

SPEC_VERSION = 1

# --- the parts every training job shares -------------------------------------------------------------

Optimizer = Literal[
    "AdamW",
    "AdamW8bit",
    "AdamW8bitTorchao",
    "Lion",
    "Lion8bit",
    "Adafactor",
    "SGD",
    "Prodigy",
    "AdamWScheduleFree",
]
LRScheduler = Literal[
    "a1111", "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
]


@dataclass(frozen=True)
class TrainSpec(Spec):
    """How to optimise. `learn_rate` is A1111's schedule syntax ("0.005", "0.1:500, 0.01:1000") when
    `lr_scheduler` is "a1111" (training stops when that schedule ends), else a plain number."""

    learn_rate: str = "0.005"
    lr_scheduler: LRScheduler = "a1111"
    lr_warmup_steps: int = bounded(0, 0)
    optimizer: Optimizer = "AdamW"
    weight_decay: float = bounded(0.0, 0.0)
    batch_size: int = bounded(1, 1, 1024)
    gradient_accumulation: int = bounded(1, 1, 4096)
    max_steps: int = bounded(1000, 1)
    clip_grad_mode: Literal["disabled", "value", "norm"] = "disabled"
    clip_grad_value: str = "0.1"  # A1111 schedule syntax too
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    noise_offset: float = bounded(0.0, 0.0, 1.0)  # kohya's noise offset; 0 off (train/diffusion_loss.py)
    min_snr_gamma: float = bounded(0.0, 0.0, 1000.0)  # min-SNR-gamma loss weighting, ~5; 0 off
    ema_decay: float = bounded(0.0, 0.0, 0.99999)  # saved weights are an EMA of the trained ones; 0 off
    ema_update_every: int = bounded(1, 1, 10000)  # optimizer steps between EMA updates
    fused_backward: bool = False  # step each tensor in backward, free its gradient (train/fused_backward.py)
    torch_compile: bool = False  # compile the UNet: faster steps after minutes of compiling (long GPU runs)
    cpu_threads: int = bounded(0, 0, 1024)  # threads of a CPU run; 0: torch's own (1 suits a busy machine)
    data_workers: int = bounded(-1, -1, 64)  # batch-building processes; -1: auto (0 on the CPU), 0: inline
    seed: int = 0
    save_every: int = bounded(500, 0)  # 0: only at the end
    preview_every: int = bounded(500, 0)
    log_every: int = bounded(1, 1)  # loss CSV / TensorBoard rows
    early_stop_epochs: int = bounded(0, 0)  # stop when the epoch loss has not improved for N epochs; 0 off
    nan_policy: Literal["stop", "rollback"] = "rollback"
    move_unused_to_cpu: bool = True  # "move VAE and CLIP to RAM" once latents/conds are cached
    resume: bool = True  # continue from the last full-state checkpoint of this job if there is one
    resume_with_changes: bool = False  # resume even when the job's settings differ from the saved run's

    def validate(self) -> None:
        from liandan.train.lr_schedule import clip_value_schedule, learn_rate_schedule

        learn_rate_schedule(self.learn_rate, self.lr_scheduler, self.max_steps, self.lr_warmup_steps)
        if self.clip_grad_mode != "disabled":
            clip_value_schedule(self.clip_grad_value, self.max_steps)
        if self.fused_backward:
            self._check_fused_backward()
        if self.ema_decay > 0 and self.optimizer == "AdamWScheduleFree":
            raise ConfigError(
                "ema_decay with optimizer AdamWScheduleFree: schedule-free already saves an average of the "
                "weights; set ema_decay = 0 or choose another optimizer"
            )

    def _check_fused_backward(self) -> None:
        refusals = {
            "gradient_accumulation > 1": self.gradient_accumulation > 1,  # one step per backward
            "clip_grad_mode 'norm'": self.clip_grad_mode == "norm",  # needs the whole gradient at once
            "mixed_precision 'fp16'": self.mixed_precision == "fp16",  # its scaler sees all gradients first
            "optimizer Prodigy": self.optimizer == "Prodigy",  # estimates its step over the whole group
        }
        bad = [what for what, refused in refusals.items() if refused]
        if bad:
            raise ConfigError(
                f"fused_backward steps each tensor as soon as its gradient is ready, which does not work "
                f"with {', '.join(bad)}; turn fused_backward off or change that setting"
            )


@dataclass(frozen=True)
class DataSpec(Spec):
    folder: Path = Path()
    recursive: bool = False
    width: int = bounded(512, 64, 4096)
    height: int = bounded(512, 64, 4096)
    buckets: bool = False  # aspect-ratio buckets instead of one W×H
    resize_mode: Literal["crop", "stretch"] = "crop"  # one W×H: centre crop, or A1111's stretch (no crop)
    template: str = "liandan_style_filewords.txt"  # a file in the templates folder, or a path
    prompt: str = ""  # one literal prompt ([filewords], [name] filled in) instead of the template
    filename_regex: str = ""
    join_string: str = " "
    shuffle_tags: bool = False
    tag_dropout: float = bounded(0.0, 0.0, 1.0)
    flip: float = bounded(0.0, 0.0, 1.0)  # probability of a horizontal flip
    latent_sampling: Literal["once", "deterministic", "random"] = "once"
    latent_cache: Literal["ram", "disk", "off"] = "ram"
    use_alpha_weight: bool = False  # PNG alpha as loss weight
    repeats: int = bounded(1, 1, 10000)
    weight: float = bounded(1.0, 0.01, 100.0)  # loss weight beside the other datasets (DreamBooth's prior)


@dataclass(frozen=True)
class ValidationSpec(DataSpec):
    """A held-out image folder scored every `every` steps, without gradients, at `timesteps` fixed
    timesteps spread over the noise schedule with fixed noise, so every score compares alike. Its images
    are used as they are: no flips, the latents' mean, the template's lines without shuffle or dropout."""

    every: int = bounded(100, 1)
    timesteps: int = bounded(4, 1, 1000)


@dataclass(frozen=True)
class PreviewSpec(Spec):
    """Preview images during training. An empty prompt uses the template with the first caption."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = bounded(20, 1, 150)
    sampler: Literal["euler_a", "euler", "ddim", "dpmpp_2m"] = "euler_a"
    cfg_scale: float = bounded(7.0, 1.0, 30.0)
    seed: int = -1
    width: int = bounded(512, 64, 4096)
    height: int = bounded(512, 64, 4096)
    self_test: bool = True  # after each save, render with and without the artifact and compare


@dataclass(frozen=True)
class JobSpec(Spec):
    """Base of runnable jobs. `kind` names the job in the registry; `model` is a checkpoint path, a name
    the host knows, or "" for the host's current/default model."""

    kind: ClassVar[str] = ""
    model: str = ""
    log_dir: Path | None = None
    clip_skip: int = bounded(1, 1, 12)

    def written_folders(self) -> list[Path]:
        """The folders named in the spec that the job writes into (beyond the host's own artifact and log
        folders): a REST job may only write inside the host's folders (liandan/rest.py)."""
        return [self.log_dir] if self.log_dir is not None else []


def job_from_dict(data: Mapping[str, Any]) -> JobSpec:
    """The job spec of a TOML/JSON/REST dict, its class found in the registry by `kind`."""
    from liandan import registry

    if not isinstance(data, Mapping):
        raise ConfigError(f"a job is a table of settings (a JSON object), not a {type(data).__name__}")
    version = data.get("spec_version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise ConfigError(f"job file has spec_version {version}; this liandan reads version {SPEC_VERSION}")
    return registry.spec_class(data.get("kind")).from_dict(data)


def job_to_dict(job: JobSpec) -> dict[str, Any]:
    return {"kind": job.kind, "spec_version": SPEC_VERSION, **job.to_dict()}


def load_job_file(path: Path) -> JobSpec:
    """A job from a .toml or .json file; its relative paths are taken from the file's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read job file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"job file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
    else:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10 (the WebUI's own)
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
    try:
        job = job_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return resolve_paths(job, path.resolve().parent)


# --- job kinds -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextualInversionJob(JobSpec):
    """Create (if missing or `overwrite`) and train a textual-inversion embedding.

    An existing embedding of that name is trained further from its saved step, as A1111's Train does, with
    its own vector count (`vectors` and `init_text` make a new one). See liandan/methods/textual_inversion.py.
    """

    kind: ClassVar[str] = "textual_inversion"
    name: str = ""
    init_text: str = "*"
    vectors: int = bounded(1, 1, 75)
    overwrite: bool = False
    file_format: Literal["pt", "safetensors"] = "pt"
    save_png_cards: bool = True
    train: TrainSpec = field(default_factory=lambda: TrainSpec(learn_rate="0.005"))
    data: DataSpec = field(default_factory=lambda: DataSpec(template="liandan_style_filewords.txt"))
    extra_data: tuple[DataSpec, ...] = ()  # more folders trained at once ([[extra_data]] in TOML)
    validation: ValidationSpec | None = None
    preview: PreviewSpec = field(default_factory=PreviewSpec)

    def validate(self) -> None:
        check_name(self.name, "embedding")


@dataclass(frozen=True)
class HypernetworkJob(JobSpec):
    """Create (if missing or `overwrite`) and train a hypernetwork; an existing `<name>.pt` trains on from its
    step. Empty `sizes` means every attention width the model has (SD1: 768, 320, 640, 1280; SD2: 1024, 320,
    640, 1280; SDXL: 2048, 640, 1280). Empty `dropout_structure`: zeros without `use_dropout`, else A1111's
    default for the layer structure. See liandan/methods/hypernetwork.py for the rules."""

    kind: ClassVar[str] = "hypernetwork"
    name: str = ""
    sizes: tuple[int, ...] = ()
    layer_structure: str = "1, 2, 1"
    activation: str = "linear"
    weight_init: Literal["Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"] = (
        "Normal"
    )
    layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: str = ""  # "0, 0.3, 0"; empty: zeros, or A1111's default with use_dropout
    last_layer_dropout: bool = False
    activate_output: bool = False
    overwrite: bool = False
    train: TrainSpec = field(default_factory=lambda: TrainSpec(learn_rate="0.000005"))
    data: DataSpec = field(default_factory=lambda: DataSpec(template="liandan_hypernetwork.txt"))
    extra_data: tuple[DataSpec, ...] = ()  # more folders trained at once ([[extra_data]] in TOML)
    validation: ValidationSpec | None = None
    preview: PreviewSpec = field(default_factory=PreviewSpec)

    def validate(self) -> None:
        from liandan.models.hypernetwork_modules import (
            check_activation,
            parse_dropout_structure,
            parse_layer_structure,
        )

        check_name(self.name, "hypernetwork")
        layers = parse_layer_structure(self.layer_structure)
        check_activation(self.activation)
        parse_dropout_structure(self.dropout_structure, layers, self.use_dropout, self.last_layer_dropout)


ScorerArchitecture = Literal["convnext_tiny", "mobilenet_v3_small", "resnet18", "efficientnet_b0"]


@dataclass(frozen=True)
class AptJob(JobSpec):
    """Create (if missing or `overwrite`) and train an APT pair: the positive embedding `name` and the
    negative `name-neg`, learned together through a guided prediction (DreamArtist's advanced prompt tuning).

    `cfg_scale` is "5", or a range "3-5" drawn every step, with a curve "3-5:cos" (train/guidance.py).
    `neg_lr_scale` scales the negative's learning rate. `reconstruction_weight` > 0 adds an L1 loss
    between the training image and the VAE decoding of the predicted clean latents; `attention_maps`
    weights the loss by each image's `<image>_att.png` (grey level); `ema_decay` > 0 saves an exponential
    moving average of the vectors; `discriminator` (a state dict of a `discriminator_arch` torchvision
    network with one output) scores the decoded prediction, weighted by `discriminator_weight`.
    See liandan/methods/apt.py.
    """

    kind: ClassVar[str] = "apt"
    name: str = ""
    init_text: str = "*"
    vectors: int = bounded(3, 1, 75)
    neg_init_text: str = "*"  # as the positive's default; "" starts from zeros
    neg_vectors: int = bounded(6, 1, 75)
    overwrite: bool = False
    file_format: Literal["pt", "safetensors"] = "pt"
    save_png_cards: bool = True
    cfg_scale: str = "5"
    neg_lr_scale: float = bounded(1.0, 0.0, 100.0)
    reconstruction_weight: float = bounded(0.0, 0.0, 100.0)
    attention_maps: bool = False
    ema_decay: float = bounded(0.0, 0.0, 0.99999)
    discriminator: Path | None = None
    discriminator_arch: ScorerArchitecture = "convnext_tiny"
    discriminator_weight: float = bounded(0.1, 0.0, 100.0)
    train: TrainSpec = field(default_factory=lambda: TrainSpec(learn_rate="0.0025"))
    data: DataSpec = field(default_factory=lambda: DataSpec(template="liandan_style_filewords.txt"))
    extra_data: tuple[DataSpec, ...] = ()  # more folders trained at once ([[extra_data]] in TOML)
    validation: ValidationSpec | None = None
    preview: PreviewSpec = field(default_factory=lambda: PreviewSpec(cfg_scale=4.0))

    @property
    def neg_name(self) -> str:
        return f"{self.name}-neg"

    def validate(self) -> None:
        from liandan.train.guidance import parse_cfg_scale

        check_name(self.name, "embedding")
        parse_cfg_scale(self.cfg_scale)


# --- aesthetic gradients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AestheticSettings(Spec):
    """How an aesthetic embedding steers a prompt (models/aesthetic_conditioning.py): `steps` Adam steps at
    `learn_rate` turn a copy of the text encoder(s) toward the embedding; the adapted conditioning is
    blended in at `weight` (linearly, or by `slerp`). `text` rotates the target toward (or, with
    `text_is_negative`, away from) that text's feature by `slerp_angle`. Weight 0 or steps 0: no change."""

    weight: float = bounded(0.9, 0.0, 1.0)
    steps: int = bounded(5, 0, 50)
    learn_rate: float = bounded(0.0001, 0.0, 0.01)
    slerp: bool = False
    slerp_angle: float = bounded(0.1, 0.0, 1.0)
    text: str = ""
    text_is_negative: bool = False

    @property
    def active(self) -> bool:
        return self.weight > 0 and self.steps > 0

    def validate(self) -> None:
        if self.steps > 0 and self.learn_rate <= 0:
            raise ConfigError(f"learn_rate = {self.learn_rate!r}: expected more than 0 when steps > 0")


@dataclass(frozen=True)
class AestheticJob(JobSpec):
    """Create an aesthetic embedding `name` from the images in `folder`: the mean of their unit-length CLIP
    image features (the vision tower(s) matching the model's text encoder(s), models/clip_vision.py),
    normalised, written to the host's aesthetic_embeddings folder. No training loop: one pass, batched.
    See liandan/methods/aesthetic.py and liandan/formats/aesthetic.py (the file layout)."""

    kind: ClassVar[str] = "aesthetic"
    name: str = ""
    folder: Path = Path()
    recursive: bool = False
    batch_size: int = bounded(16, 1, 1024)
    file_format: Literal["pt", "safetensors", "both"] = "both"  # .pt: the old extension's layout
    overwrite: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_download: bool = True

    def validate(self) -> None:
        check_name(self.name, "aesthetic embedding")
        if self.folder == Path():
            raise ConfigError("the aesthetic embedding needs an image folder (folder)")


@dataclass(frozen=True)
class GenerateSpec(Spec):
    """One fixed-seed txt2img on our own sampler (`python -m liandan generate`, the Aesthetic tab's Generate
    panel), optionally steered by the aesthetic embedding `aesthetic` (a name in the aesthetic_embeddings
    folder, or a file). `out`: the PNG to write (None: a new file under the log folder's generate/)."""

    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    seed: int = bounded(0, 0, 2**32 - 1)
    steps: int = bounded(20, 1, 150)
    cfg_scale: float = bounded(7.0, 1.0, 30.0)
    sampler: Literal["euler_a", "euler", "ddim", "dpmpp_2m"] = "euler_a"
    width: int = bounded(512, 64, 2048)
    height: int = bounded(512, 64, 2048)
    clip_skip: int = bounded(1, 1, 12)
    aesthetic: str = ""
    aesthetic_settings: AestheticSettings = field(default_factory=AestheticSettings)
    allow_download: bool = True
    out: Path | None = None

    def validate(self) -> None:
        if self.width % 8 or self.height % 8:
            raise ConfigError(f"size {self.width}x{self.height}: width and height must be multiples of 8")


# --- DreamBooth concepts (shared with LoRA) -----------------------------------------------------------


@dataclass(frozen=True)
class ConceptSpec(Spec):
    """One subject to learn: its images and prompt, and optionally class images for prior preservation.

    `instance_prompt` and `class_prompt` are literal prompts; `[filewords]` in them is each image's caption
    (its .txt, else its file name). A `class_folder` turns prior preservation on for the concept: it is
    filled up to `num_class_images` with images the model generates from `class_prompt` (with
    `class_negative_prompt`, `class_cfg_scale`, `class_steps`) before training; 0 uses what is there.
    `repeats` is how often each instance image is seen per epoch (class images once); `loss_weight` scales
    the concept's loss, its class images' too. See liandan/data/concepts.py.
    """

    instance_folder: Path = Path()
    instance_prompt: str = ""
    class_folder: Path = Path()
    class_prompt: str = ""
    num_class_images: int = bounded(0, 0, 100000)
    class_negative_prompt: str = ""
    class_cfg_scale: float = bounded(7.0, 1.0, 30.0)
    class_steps: int = bounded(20, 1, 150)
    repeats: int = bounded(1, 1, 10000)
    loss_weight: float = bounded(1.0, 0.01, 100.0)

    @property
    def has_class_images(self) -> bool:
        return self.class_folder != Path()

    def validate(self) -> None:
        where = f"concept {str(self.instance_folder)!r}"
        if self.instance_folder == Path():
            raise ConfigError("a concept needs an instance folder (the images of the subject)")
        if not self.instance_prompt.strip():
            raise ConfigError(f"{where} needs an instance prompt, e.g. 'a photo of sks dog'")
        if not self.has_class_images:
            if self.num_class_images or self.class_prompt.strip():
                raise ConfigError(
                    f"{where}: num_class_images/class_prompt are set but class_folder is empty; name the "
                    "folder the class images are kept in (prior preservation), or clear them"
                )
            return
        if self.class_folder.resolve() == self.instance_folder.resolve():
            raise ConfigError(
                f"{where}: the class folder is the instance folder ({self.class_folder}); class images "
                "must be kept apart from the subject's images"
            )
        if not self.class_prompt.strip():
            raise ConfigError(f"{where} has a class folder but no class prompt, e.g. 'a photo of a dog'")


@dataclass(frozen=True)
class ConceptJobSpec(JobSpec):
    """Base of jobs that train concepts (DreamBooth, LoRA). With `concepts`, each concept's instance and
    class images are the datasets (read with the job's `data` options; its folder stays empty) and missing
    class images are generated before training; without, the job trains `data` and `extra_data` as any
    other. `prior_loss_weight` scales the class images' loss. The data, validation and preview sections are
    the same for every concept job; each sets its own `train` defaults."""

    method_title: ClassVar[str] = ""  # "DreamBooth", "LoRA": in messages
    artifact_noun: ClassVar[str] = ""  # what `name` names: "checkpoint", "LoRA"
    concepts: tuple[ConceptSpec, ...] = ()  # [[concepts]] in TOML
    prior_loss_weight: float = bounded(1.0, 0.01, 100.0)
    data: DataSpec = field(default_factory=lambda: DataSpec(template="liandan_subject_filewords.txt"))
    extra_data: tuple[DataSpec, ...] = ()  # more folders trained at once ([[extra_data]] in TOML)
    validation: ValidationSpec | None = None
    preview: PreviewSpec = field(default_factory=PreviewSpec)

    def written_folders(self) -> list[Path]:
        """Missing class images are generated into the class folders."""
        fills = [c.class_folder for c in self.concepts if c.has_class_images and c.num_class_images]
        return [*super().written_folders(), *fills]

    def validate(self) -> None:
        check_name(self.name, self.artifact_noun)  # type: ignore[attr-defined]
        data = self.data
        if not self.concepts and data.folder == Path():
            raise ConfigError(
                f"the {self.method_title} job needs at least one concept ([[concepts]]) or a data.folder"
            )
        if self.concepts and data.folder != Path():
            raise ConfigError(
                f"give either concepts or data.folder ({data.folder}), not both; a folder trained beside "
                "the concepts goes in [[extra_data]]"
            )
        instance = {c.instance_folder.resolve(): c for c in self.concepts}
        for concept in self.concepts:
            other = instance.get(concept.class_folder.resolve()) if concept.has_class_images else None
            if other is not None:
                raise ConfigError(
                    f"the class folder {concept.class_folder} of concept {str(concept.instance_folder)!r} is "
                    f"the instance folder of another concept; class images must be kept apart"
                )


@dataclass(frozen=True)
class DreamBoothJob(ConceptJobSpec):
    """Fine-tune the model itself (its UNet, and with `train_text_encoder` its text encoder(s)) on concepts,
    and save it as the single-file checkpoint `<checkpoints>/<name>.<save_format>`.

    The text encoders learn at `text_encoder_lr_scale` × the UNet's rate (same schedule) and stop at
    `text_encoder_stop_step` (0: train to the end). `vae` (a file, or a name in models/VAE) replaces the
    model's VAE for training and in the saved file. `save_dtype` is the precision of the saved weights. An
    existing checkpoint of that name is refused unless `overwrite`. See liandan/methods/dreambooth.py.
    """

    kind: ClassVar[str] = "dreambooth"
    method_title: ClassVar[str] = "DreamBooth"
    artifact_noun: ClassVar[str] = "checkpoint"
    name: str = ""
    train_text_encoder: bool = False
    text_encoder_lr_scale: float = bounded(1.0, 0.0, 100.0)
    text_encoder_stop_step: int = bounded(0, 0)
    vae: str = ""
    save_format: Literal["safetensors", "ckpt"] = "safetensors"
    save_dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    overwrite: bool = False
    train: TrainSpec = field(
        default_factory=lambda: TrainSpec(learn_rate="0.000002", lr_scheduler="constant", max_steps=800)
    )


# --- LoRA / LyCORIS (liandan/methods/lora.py) ------------------------------------------------------------

NetworkType = Literal["lora", "locon", "loha", "lokr", "dora"]


@dataclass(frozen=True)
class NetworkSpec(Spec):
    """The network a LoRA job trains (liandan/models/lora_injection.py): its type, `rank` (dim) and `alpha`
    of the attention/linear layers, `conv_rank`/`conv_alpha` of the convolutions ("locon", "loha", "lokr";
    0: none), dropouts (of the output, of ranks, of whole modules), what it targets ("attention": the
    attention projections; "transformer": also feed-forward and proj_in/out), per-block UNet ranks
    (`block_ranks` = "input_blocks_4=8, middle_block=16", LDM names), LoKr's factor (-1: automatic)."""

    type: NetworkType = "lora"
    rank: int = bounded(8, 1, 1024)
    alpha: float = bounded(4.0, 0.0)
    conv_rank: int = bounded(4, 0, 1024)
    conv_alpha: float = bounded(1.0, 0.0)
    dropout: float = bounded(0.0, 0.0, 1.0)
    rank_dropout: float = bounded(0.0, 0.0, 1.0)
    module_dropout: float = bounded(0.0, 0.0, 1.0)
    targets: Literal["attention", "transformer"] = "attention"
    block_ranks: str = ""
    lokr_factor: int = bounded(-1, -1)

    def validate(self) -> None:
        from liandan.models.lora_injection import parse_block_ranks

        for name in ("alpha", "conv_alpha"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} = {getattr(self, name)!r} is not a number; expected e.g. 4 or 0.5")
        if self.dropout > 0 and self.type in ("loha", "lokr", "dora"):
            raise ConfigError(
                f"dropout = {self.dropout}: lycoris applies no output dropout to {self.type}; use "
                "rank_dropout or module_dropout, or the types lora/locon"
            )
        parse_block_ranks(self.block_ranks)


@dataclass(frozen=True)
class LoraJob(ConceptJobSpec):
    """Train a LoRA or a LyCORIS network (`network`) into `<lora folder>/<name>.safetensors`, the key layout
    the WebUI's built-in Lora extension reads, with kohya's `ss_*` metadata. `text_encoder_lr_scale` > 0
    also trains the text encoders (both, for SDXL) at that multiple of the learning rate; `save_precision`
    is the file's dtype (the WebUI applies LoHa/LoKr in the file's dtype: on a full-precision model an
    fp16 file rounds the weights it touches, even at weight 0; save those as fp32 for such models). It
    trains DreamBooth's concepts (with or without class images) or `data` and `extra_data`. An existing
    file of that name is replaced only with `overwrite` (which starts over) or when resuming its run. See
    liandan/methods/lora.py."""

    kind: ClassVar[str] = "lora"
    method_title: ClassVar[str] = "LoRA"
    artifact_noun: ClassVar[str] = "LoRA"
    name: str = ""
    network: NetworkSpec = field(default_factory=NetworkSpec)
    text_encoder_lr_scale: float = bounded(0.0, 0.0, 100.0)
    save_precision: Literal["fp32", "fp16", "bf16"] = "fp16"
    overwrite: bool = False
    train: TrainSpec = field(
        default_factory=lambda: TrainSpec(learn_rate="0.0001", lr_scheduler="constant", save_every=0)
    )
