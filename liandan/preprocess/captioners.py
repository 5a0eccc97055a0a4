"""Build the captioners a preprocess job asks for, on the chosen device, from the models folder."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from PIL import Image

from liandan.preprocess.job import PreprocessJob
from liandan.preprocess.tag_format import TagFormat
from liandan.preprocess.weights import DEEPBOORU, WeightFile, ensure_weights


class Captioner(Protocol):
    name: str

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order (one batched forward pass where the model allows)."""
        ...


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def tag_format(job: PreprocessJob) -> TagFormat:
    return TagFormat(
        threshold=job.tag_threshold,
        sort=job.tag_sort,
        use_spaces=job.tag_use_spaces,
        escape_brackets=job.tag_escape_brackets,
        filter_tags=job.tag_filter,
        drop_rating=job.tag_drop_rating,
        include_scores=job.tag_include_scores,
    )


def weight_files(job: PreprocessJob) -> list[WeightFile]:
    """Every downloadable file the job's captioners need."""
    files: list[WeightFile] = []
    for name in job.captioners:
        if name == "deepbooru":
            files.append(DEEPBOORU)
        elif name == "blip":
            from liandan.preprocess import blip

            files += blip.weight_files(job.blip_model)
        elif name == "wd14":
            from liandan.preprocess import wd14

            files += wd14.weight_files(job.wd14_model)
    return files


def build_captioners(job: PreprocessJob, models_dir: Path, device: str) -> list[Captioner]:
    """In the job's order; weights are found under `models_dir` or downloaded (see weights.py)."""
    # fetched together first, so that a user offline learns of every missing file in one message
    ensure_weights(weight_files(job), models_dir, job.allow_download)
    captioners: list[Captioner] = []
    for name in job.captioners:
        if name == "deepbooru":
            from liandan.preprocess.deepbooru import DeepbooruCaptioner, load_deepbooru

            [path] = ensure_weights([DEEPBOORU], models_dir, job.allow_download)
            captioners.append(DeepbooruCaptioner(load_deepbooru(path), tag_format(job), device))
        elif name == "blip":
            from liandan.preprocess.blip import BlipCaptioner, BlipOptions

            options = BlipOptions(
                job.blip_model, job.blip_num_beams, job.blip_min_length, job.blip_max_length
            )
            captioners.append(BlipCaptioner.load(options, models_dir, device, job.allow_download))
        elif name == "wd14":
            from liandan.preprocess.wd14 import Wd14Captioner, Wd14Options

            options = Wd14Options(
                model=job.wd14_model,
                general_threshold=job.wd14_general_threshold,
                character_threshold=job.wd14_character_threshold,
                rating_tags=job.wd14_rating_tags,
                character_first=job.wd14_character_first,
                exclude_tags=job.wd14_exclude_tags,
                use_spaces=job.tag_use_spaces,
                escape_brackets=job.tag_escape_brackets,
                include_scores=job.tag_include_scores,
            )
            captioners.append(Wd14Captioner.load(options, models_dir, device, job.allow_download))
        else:
            from liandan.preprocess.deepdanbooru_project import DeepDanbooruProjectCaptioner

            assert job.deepdanbooru_project is not None  # checked by the spec
            captioners.append(DeepDanbooruProjectCaptioner(job.deepdanbooru_project, tag_format(job)))
    return captioners
