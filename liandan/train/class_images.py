"""Class images for prior preservation: fill each concept's class folder up to `num_class_images` with images
the model being trained makes of the class prompt, before training starts.

Resumable: the usable images already in the folder count (the user's own or an earlier, perhaps interrupted,
run's), only the rest is generated, so a second run generates nothing. Image `i` of a folder has a seed
derived from the job's seed, the class prompt and `i`, so an interrupted fill continues with the images it
would have made. Files are named as A1111 names its outputs (`00012-<seed>.png`: no caption from the file
name) and written atomically with A1111's `parameters` text, which PNG Info reads. The free disk space is
checked for every image of every concept before the first is made.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.data.dataset import derive_seed
from liandan.data.image_folder import scan_image_folder
from liandan.data.templates import PromptTemplate
from liandan.errors import DatasetError, TrainingStopped
from liandan.progress import Control, ProgressEvent, Reporter

if TYPE_CHECKING:
    import torch

    from liandan.jobs import ConceptJobSpec, ConceptSpec
    from liandan.models.bundle import ModelBundle

# an upper bound on a generated PNG: 8-bit RGB barely compresses worse than raw, plus the text chunk
PNG_HEADROOM = 64 * 1024


@dataclass(frozen=True)
class ClassImageSettings:
    """How class images are made besides each concept's prompt, CFG scale and steps (the job's)."""

    width: int
    height: int
    sampler: str = "euler_a"
    batch_size: int = 1
    seed: int = 0
    clip_skip: int = 1
    name: str = ""  # replaces [name] in the class prompt


def existing_class_images(concept: ConceptSpec) -> int:
    if not concept.has_class_images or not concept.class_folder.is_dir():
        return 0
    return len(scan_image_folder(concept.class_folder).images)


def image_bytes(settings: ClassImageSettings) -> int:
    return settings.width * settings.height * 3 + PNG_HEADROOM


def check_disk_space(missing: Sequence[tuple[ConceptSpec, int]], settings: ClassImageSettings) -> None:
    """DatasetError, before anything is written, when the class images to make do not fit on their disks."""
    needed: dict[Path, int] = {}
    for concept, count in missing:
        disk = _existing_parent(concept.class_folder)
        needed[disk] = needed.get(disk, 0) + count * image_bytes(settings)
    for disk, size in needed.items():
        free = shutil.disk_usage(disk).free
        if size > free:
            raise DatasetError(
                f"the class images need about {size / 2**20:.0f} MiB on {disk} but only "
                f"{free / 2**20:.0f} MiB is free; free some space, lower num_class_images or the image "
                "size, or put the class folder on another disk"
            )


def _existing_parent(folder: Path) -> Path:
    folder = folder.resolve()
    while not folder.exists():
        folder = folder.parent
    return folder


def class_prompt(concept: ConceptSpec, name: str) -> str:
    """The prompt class images are made from: the class prompt without a caption for [filewords]."""
    filled = PromptTemplate.literal(concept.class_prompt).fill("", name, random.Random(0))
    return ", ".join(part.strip() for part in filled.split(",") if part.strip())


def generate_class_images(
    bundle: ModelBundle,
    concept: ConceptSpec,
    settings: ClassImageSettings,
    *,
    first: int,
    count: int,
    reporter: Reporter,
    control: Control,
    job: str = "",
) -> list[Path]:
    """Images `first` .. `first + count - 1` of the concept's class folder, a batch at a time."""
    from liandan.models.sampling import generate_batch, infotext
    from liandan.train.self_test import save_png

    prompt = class_prompt(concept, settings.name)
    negative = concept.class_negative_prompt
    concept.class_folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for start in range(first, first + count, settings.batch_size):
        if control.interrupted:
            raise TrainingStopped(f"interrupted while making class images ({len(written)} of {count} made)")
        indices = range(start, min(start + settings.batch_size, first + count))
        seeds = [derive_seed(settings.seed, concept.class_prompt, i) % 2**32 for i in indices]
        images = generate_batch(
            bundle, [prompt] * len(seeds), [negative] * len(seeds), steps=concept.class_steps,
            cfg_scale=concept.class_cfg_scale, seeds=seeds, width=settings.width, height=settings.height,
            sampler=settings.sampler, clip_skip=settings.clip_skip,
        )  # fmt: skip
        for index, seed, image in zip(indices, seeds, images):
            image.info["parameters"] = infotext(
                bundle, prompt, negative, steps=concept.class_steps, sampler=settings.sampler,
                cfg_scale=concept.class_cfg_scale, seed=seed, width=settings.width, height=settings.height,
                clip_skip=settings.clip_skip,
            )  # fmt: skip
            written.append(save_png(image, _free_name(concept.class_folder, index, seed)))
        reporter(
            ProgressEvent(
                "message",
                job=job,
                message=f"class images for {prompt!r}: {len(written)} of {count}",
                extra={"class_images_done": len(written), "class_images_total": count},
            )
        )
    return written


def _free_name(folder: Path, index: int, seed: int) -> Path:
    path = folder / f"{index:05d}-{seed}.png"
    while path.exists():  # a user's file of that name stays; ours takes the next number
        index += 1
        path = folder / f"{index:05d}-{seed}.png"
    return path


def fill_class_folders(
    bundle: ModelBundle,
    concepts: Sequence[ConceptSpec],
    settings: ClassImageSettings,
    *,
    device: torch.device,
    reporter: Reporter,
    control: Control,
    job: str = "",
) -> int:
    """Make the missing class images of every concept; returns how many it made (0 when all are there).
    The model comes to `device` for it and goes back to where it was."""
    from liandan.train.run import release_memory

    missing = []
    for concept in concepts:
        if concept.has_class_images and concept.num_class_images:
            have = existing_class_images(concept)
            if have < concept.num_class_images:
                missing.append((concept, have))
    if not missing:
        return 0
    check_disk_space([(c, c.num_class_images - have) for c, have in missing], settings)
    homes = [(m, next(m.parameters()).device) for m in (bundle.unet, bundle.vae, *bundle.text_encoders)]
    made = 0
    try:
        for module, _ in homes:
            module.to(device)
        for concept, have in missing:
            count = concept.num_class_images - have
            reporter(
                ProgressEvent(
                    "message", job=job, message=f"making {count} class images in {concept.class_folder}"
                )
            )
            made += len(
                generate_class_images(
                    bundle,
                    concept,
                    settings,
                    first=have,
                    count=count,
                    reporter=reporter,
                    control=control,
                    job=job,
                )
            )
    finally:
        for module, home in homes:
            module.to(home)
        release_memory()
    return made


def without_class_images_to_make(job: ConceptJobSpec) -> ConceptJobSpec:
    """The job with no class image left to make, for a dry run that must write nothing of the user's (the
    VRAM planner's): a concept whose class folder is not full trains on its instance images alone. A class
    batch has an instance batch's shape, so the memory a dry run measures is the same."""
    concepts = tuple(
        concept.replace(class_folder=Path(), class_prompt="", num_class_images=0)
        if concept.num_class_images > existing_class_images(concept)
        else concept
        for concept in job.concepts
    )
    return job.replace(concepts=concepts)
