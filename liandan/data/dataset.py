"""The dataset the training loop consumes: a map-style torch Dataset over an image folder.

Index space: `len(dataset) == images × repeats`; index `i` is image `i % images`, so each repeat of an image
gets its own flip, prompt and latent sample. All per-item randomness (flip, template line, tag dropout and
shuffle, "random" latent sampling) is derived from (seed, epoch, index), so a resumed run reproduces every
batch exactly without saving RNG state. "once" latents are seeded by the image alone (the same every epoch).

Use:
    dataset = TrainingDataset(spec, name="myemb", vae=bundle.vae, batch_size=4, seed=0, cache_dir=...)
    dataset.cache_latents()                      # encodes what the cache mode keeps; VAE calls happen here
    if not dataset.needs_vae: move the VAE off the GPU
    for epoch in ...:
        dataset.set_epoch(epoch)                 # before building the epoch's iterator
        for indices in dataset.batch_plan(epoch):
            batch = dataset.collate([dataset[i] for i in indices])
  (the loop's worker processes build the same batches from `dataset.item(index, epoch)`, see
  liandan/train/batches.py; with latent_cache "off" the VAE runs inside __getitem__, so they are not used.)

Batch dict (the contract methods rely on):
    "latents"        float32 [B, 4, h, w], already × the VAE scaling factor
    "prompts"        list[str]: a template line with [filewords] and [name] filled in
    "captions"       list[str]: the images' captions as read (.txt or file name)
    "loss_weight"    float32 [B, 1, h, w] from PNG alpha (mean 1 per image; ones without alpha), or None
                     unless DataSpec.use_alpha_weight
    "original_size"  long [B, 2] (height, width) of the source image      } SDXL's time ids,
    "crop_top_left"  long [B, 2] (top, left) of the crop in the resized image } in SDXL's order
    "target_size"    long [B, 2] (height, width) the model sees             }
    "paths"          list[str] source image paths
    "flipped"        bool [B]
    "loss_scale"     float: the dataset's `weight`; the loop multiplies the batch's loss by it
Batches never mix sizes (buckets); every batch of an epoch is full (see buckets.plan_batches).

Several datasets at once (DreamBooth's instance and class images): `DatasetMix` puts TrainingDatasets, each
with its own folder, captions, template, repeats, cache and weight, into one index space; its batches never
mix datasets, so each batch has one `loss_scale`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from liandan.data import latent_cache
from liandan.data.buckets import Geometry, fit, make_buckets, nearest_bucket, plan_batches
from liandan.data.captions import compile_filename_regex, read_caption
from liandan.data.image_folder import (
    FolderScan,
    ImageRecord,
    SkippedFile,
    describe,
    open_image,
    scan_image_folder,
)
from liandan.data.pixels import alpha_loss_weight, crop_and_flip, to_pixel_tensor
from liandan.data.templates import PromptTemplate
from liandan.errors import ConfigError, DatasetError, TrainingStopped

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from liandan.jobs import DataSpec

BUCKET_STEP = 64  # SD's UNet needs latent sides divisible by 8, i.e. 64 pixels


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts; stable across processes and Python versions (no hash randomisation)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class DatasetImage:
    record: ImageRecord
    caption: str
    geometry: Geometry  # unflipped


class TrainingDataset(Dataset):
    def __init__(
        self,
        spec: DataSpec,
        *,
        name: str,
        vae: AutoencoderKL,
        batch_size: int = 1,
        seed: int = 0,
        cache_dir: Path | None = None,
        model_id: str | None = None,
        templates_dir: Path | None = None,
    ) -> None:
        """`name` replaces [name]; `model_id` (e.g. the checkpoint's short hash) keys the disk cache, else a
        fingerprint of the VAE's weights does; `cache_dir` is required for latent_cache "disk";
        `templates_dir` is the user's templates folder, searched before ours."""
        if spec.folder == Path():
            raise DatasetError("no dataset folder given")
        self.spec = spec
        self.name = name
        self.vae = vae
        self.seed = seed
        self.epoch = 0
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if spec.width % self.vae_factor or spec.height % self.vae_factor:
            raise ConfigError(
                f"training size {spec.width}x{spec.height} must be a multiple of {self.vae_factor} "
                "(the VAE's downscale factor)"
            )
        if spec.prompt:
            self.template = PromptTemplate.literal(spec.prompt, spec.shuffle_tags, spec.tag_dropout)
        else:
            self.template = PromptTemplate.load(
                spec.template, templates_dir, spec.shuffle_tags, spec.tag_dropout
            )
        self.scan: FolderScan = scan_image_folder(spec.folder, spec.recursive)
        self.skipped: list[SkippedFile] = list(self.scan.skipped)
        self.images = self._build_images()
        self.batch_size = min(batch_size, len(self))  # A1111: min(batch_size, dataset length)
        self.flip_variants = [False, True] if 0 < spec.flip < 1 else [spec.flip == 1]
        self._cache = self._make_cache(cache_dir)
        self.model_id = (
            model_id if model_id or spec.latent_cache != "disk" else latent_cache.vae_fingerprint(vae)
        )

    def _build_images(self) -> list[DatasetImage]:
        word_regex = compile_filename_regex(self.spec.filename_regex)
        target = (self.spec.width, self.spec.height)
        buckets = make_buckets(*target, step=BUCKET_STEP) if self.spec.buckets else []
        images = []
        for record in self.scan.images:
            try:
                caption = read_caption(record.path, word_regex, self.spec.join_string)
            except DatasetError as e:  # one bad caption file skips its image, listed, not the whole run
                self.skipped.append(SkippedFile(record.path, str(e)))
                continue
            if buckets:
                geometry = fit(record.size, nearest_bucket(record.size, buckets), "crop")
            else:
                geometry = fit(record.size, target, self.spec.resize_mode)
            images.append(DatasetImage(record, caption, geometry))
        if not images:
            raise DatasetError(f"no usable image in dataset folder {self.scan.folder}\n{self.report()}")
        return images

    def _make_cache(self, cache_dir: Path | None) -> latent_cache.RamCache | latent_cache.DiskCache | None:
        if self.spec.latent_cache == "ram":
            return latent_cache.RamCache()
        if self.spec.latent_cache == "disk":
            if cache_dir is None:
                raise ConfigError("latent_cache 'disk' needs a cache folder")
            return latent_cache.DiskCache(cache_dir)
        return None

    # --- what the loop calls ---------------------------------------------------------------------------

    @property
    def parts(self) -> list[TrainingDataset]:
        """The datasets this one is made of (itself), as a DatasetMix lists its own."""
        return [self]

    def __len__(self) -> int:
        return len(self.images) * self.spec.repeats

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch_plan(self, epoch: int) -> list[list[int]]:
        """The batches of `epoch` (dataset indices), the same for the same (seed, epoch)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index in range(len(self)):
            groups.setdefault(self._image(index).geometry.target_size, []).append(index)
        return plan_batches(groups, self.batch_size, random.Random(derive_seed(self.seed, epoch, "batches")))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int) -> dict[str, Any]:
        image = self._image(index)
        flip = self.is_flipped(index, epoch)
        entry = self._entry(image, flip)
        if self.spec.latent_sampling == "random":
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index, "latent"))
        else:  # "once": one fixed sample per image and flip; "deterministic" draws nothing
            generator = torch.Generator().manual_seed(derive_seed(self.seed, image.record.content_hash, flip))
        geometry = image.geometry.flipped() if flip else image.geometry
        weight = None
        if self.spec.use_alpha_weight:
            weight = entry.get("alpha_weight", torch.ones(1, *entry["mean"].shape[1:]))
        return {
            "latents": latent_cache.sample(
                entry, self.spec.latent_sampling, generator, self.scaling, self.shift
            ),
            "prompt": self.prompt(index, epoch),
            "caption": image.caption,
            "loss_weight": weight,
            "original_size": geometry.original_size[::-1],
            "crop_top_left": geometry.crop_left_top[::-1],
            "target_size": geometry.target_size[::-1],
            "path": str(image.record.path),
            "flipped": flip,
            "loss_scale": self.spec.weight,
        }

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        weights = [item["loss_weight"] for item in items]
        return {
            "latents": torch.stack([item["latents"] for item in items]),
            "prompts": [item["prompt"] for item in items],
            "captions": [item["caption"] for item in items],
            "loss_weight": None if any(w is None for w in weights) else torch.stack(weights),
            "original_size": torch.tensor([item["original_size"] for item in items], dtype=torch.long),
            "crop_top_left": torch.tensor([item["crop_top_left"] for item in items], dtype=torch.long),
            "target_size": torch.tensor([item["target_size"] for item in items], dtype=torch.long),
            "paths": [item["path"] for item in items],
            "flipped": torch.tensor([item["flipped"] for item in items], dtype=torch.bool),
            "loss_scale": items[0]["loss_scale"],  # one dataset per batch (see DatasetMix)
        }

    def prompt(self, index: int, epoch: int) -> str:
        image = self._image(index)
        rng = random.Random(derive_seed(self.seed, epoch, index, "prompt"))
        return self.template.fill(image.caption, self.name, rng)

    def prompt_choices(self) -> set[str] | None:
        """Every prompt `prompt` can give in any epoch; None when tag shuffle or dropout make them endless."""
        choices: set[str] = set()
        for image in self.images:
            fills = self.template.every_fill(image.caption, self.name)
            if fills is None:
                return None
            choices |= fills
        return choices

    def is_flipped(self, index: int, epoch: int) -> bool:
        if self.spec.flip in (0, 1):
            return self.spec.flip == 1
        return random.Random(derive_seed(self.seed, epoch, index, "flip")).random() < self.spec.flip

    # --- latents -----------------------------------------------------------------------------------------

    def drop_vae(self) -> None:
        """In a data worker (liandan/train/batches.py): the VAE stays with the training process, so a latent
        missing from the cache is a clear DatasetError there instead of a VAE call on a GPU it cannot use."""
        self.vae = None

    @property
    def needs_vae(self) -> bool:
        """False once every latent the run can ask for is cached: the VAE may then leave the GPU."""
        if self._cache is None:
            return True
        return any(
            self._key(image, flip) not in self._cache for image in self.images for flip in self.flip_variants
        )

    def cache_latents(
        self,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Encode every image (and its mirror when flips are on) not cached yet; returns how many it encoded.

        A no-op with latent_cache "off". `progress(done, total)` is called after each image.
        """
        if self._cache is None:
            return 0
        work = [(image, flip) for image in self.images for flip in self.flip_variants]
        encoded = 0
        for done, (image, flip) in enumerate(work, 1):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"interrupted while caching latents ({done - 1} of {len(work)} done)")
            if self._key(image, flip) not in self._cache:
                self._entry(image, flip)
                encoded += 1
            if progress is not None:
                progress(done, len(work))
        return encoded

    def _key(self, image: DatasetImage, flip: bool) -> str:
        return latent_cache.cache_key(image.record.content_hash, self.model_id or "", image.geometry, flip)

    def _entry(self, image: DatasetImage, flip: bool) -> latent_cache.Entry:
        key = self._key(image, flip) if self._cache is not None else ""
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        if self.vae is None:
            raise DatasetError(f"the latent of {image.record.path} is not cached and no VAE is attached")
        pixels = crop_and_flip(open_image(image.record.path), image.geometry, flip)
        mean, std = latent_cache.encode(self.vae, to_pixel_tensor(pixels), image.record.path)
        entry = {"mean": mean, "std": std}
        if image.record.has_alpha:
            entry["alpha_weight"] = alpha_loss_weight(pixels, (mean.shape[2], mean.shape[1]))
        if self._cache is not None:
            info = {"source": str(image.record.path), "model": self.model_id or "", "flip": str(flip)}
            self._cache.put(key, entry, info)
        return entry

    def _image(self, index: int) -> DatasetImage:
        if not 0 <= index < len(self):
            raise IndexError(f"dataset index {index} out of range [0, {len(self)})")
        return self.images[index % len(self.images)]

    # --- for the UI/CLI ------------------------------------------------------------------------------------

    def report(self) -> str:
        """How many images, the sizes used, and every skipped file with its reason."""
        sizes: dict[tuple[int, int], int] = {}
        for image in self.images:
            sizes[image.geometry.target_size] = sizes.get(image.geometry.target_size, 0) + 1
        details = [f"  {w}x{h}: {count} image(s)" for (w, h), count in sorted(sizes.items())]
        return describe(self.scan.folder, len(self.images), self.skipped, details)


class DatasetMix(Dataset):
    """Several TrainingDatasets trained together. Index space: the parts' indices one after another. An
    epoch's plan is every part's own batch plan (its buckets and batch size), shuffled together by
    (seed, epoch); a part with more images or repeats has more batches in it."""

    collate = staticmethod(TrainingDataset.collate)

    def __init__(self, parts: Sequence[TrainingDataset], seed: int = 0) -> None:
        if not parts:
            raise DatasetError("no dataset to train on")
        self.parts, self.seed = list(parts), seed
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))
        self.images = [image for part in self.parts for image in part.images]
        self.skipped = [skipped for part in self.parts for skipped in part.skipped]
        self.template = self.parts[0].template  # the first (instance) dataset's, for preview prompts

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, index: int) -> tuple[TrainingDataset, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"dataset index {index} out of range [0, {len(self)})")
        part = next(i for i, end in enumerate(self.offsets[1:]) if index < end)
        return self.parts[part], index - self.offsets[part]

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def batch_plan(self, epoch: int) -> list[list[int]]:
        plan = [
            [offset + i for i in batch]
            for part, offset in zip(self.parts, self.offsets)
            for batch in part.batch_plan(epoch)
        ]
        random.Random(derive_seed(self.seed, epoch, "mix")).shuffle(plan)
        return plan

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, local = self._locate(index)
        return part[local]

    def item(self, index: int, epoch: int) -> dict[str, Any]:
        part, local = self._locate(index)
        return part.item(local, epoch)

    def prompt(self, index: int, epoch: int) -> str:
        part, local = self._locate(index)
        return part.prompt(local, epoch)

    @property
    def needs_vae(self) -> bool:
        return any(part.needs_vae for part in self.parts)

    def drop_vae(self) -> None:
        for part in self.parts:
            part.drop_vae()

    def cache_latents(
        self,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        return sum(part.cache_latents(progress, should_stop) for part in self.parts)

    def report(self) -> str:
        return "\n".join(part.report() for part in self.parts)


def preview_captions(dataset: TrainingDataset, n: int = 8, epoch: int = 0) -> list[str]:
    """What the model will see: the prompts of the first `n` samples of `epoch` after template, tag
    dropout and shuffle. Needs no VAE work."""
    return [dataset.prompt(index, epoch) for index in range(min(n, len(dataset)))]
