"""The `preprocess` job spec: image operations and captioners over a folder, the same from UI, CLI and TOML.

Its entry in `liandan.registry` names this spec and `run_preprocess_job`; the import is light, the work
happens in `liandan.preprocess.batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from liandan.errors import ConfigError
from liandan.jobs import JobSpec
from liandan.spec import bounded

if TYPE_CHECKING:
    from liandan.host.base import Host
    from liandan.progress import Control, Reporter

CaptionerName = Literal["deepbooru", "blip", "wd14", "deepdanbooru"]


@dataclass(frozen=True)
class PreprocessJob(JobSpec):
    """`source` is only read. Outputs go to `destination`, which must be outside `source`, unless
    `in_place_captions` is set: then destination is the source and only `.txt` captions are written."""

    kind: ClassVar[str] = "preprocess"
    source: Path = Path()
    destination: Path = Path()
    recursive: bool = False
    in_place_captions: bool = False
    # image operations, in this order: split oversized → focal/auto-sized crop or resize → flipped copies
    width: int = bounded(512, 8, 8192)
    height: int = bounded(512, 8, 8192)
    resize_mode: Literal["none", "stretch", "crop", "fill"] = "crop"
    split_oversized: bool = False
    split_threshold: float = bounded(0.5, 0.0, 1.0)
    overlap_ratio: float = bounded(0.2, 0.0, 0.9)
    crop: Literal["none", "focal", "autosize"] = "none"
    focal_face_weight: float = bounded(0.9, 0.0, 1.0)
    focal_entropy_weight: float = bounded(0.15, 0.0, 1.0)
    focal_edges_weight: float = bounded(0.5, 0.0, 1.0)
    focal_debug: bool = False
    autosize_min_dim: int = bounded(384, 64, 8192)
    autosize_max_dim: int = bounded(768, 64, 8192)
    autosize_min_area: int = bounded(64 * 64, 64 * 64)
    autosize_max_area: int = bounded(640 * 640, 64 * 64)
    autosize_objective: Literal["maximize_area", "minimize_error"] = "maximize_area"
    autosize_error_threshold: float = bounded(0.1, 0.0, 1.0)
    flip: Literal["none", "horizontal", "vertical", "both"] = "none"
    output_format: Literal["png", "jpg", "webp"] = "png"
    # captions: each captioner's text, joined with ", " in this order
    captioners: tuple[CaptionerName, ...] = ()
    existing_caption: Literal["ignore", "keep", "prepend", "append"] = "ignore"
    caption_in_filename: bool = False
    tag_threshold: float = bounded(0.5, 0.0, 1.0)  # deepbooru / DeepDanbooru projects (guides: 0.75)
    tag_sort: Literal["alphabetical", "score"] = "alphabetical"
    tag_use_spaces: bool = True
    tag_escape_brackets: bool = True
    tag_filter: str = ""
    tag_drop_rating: bool = True
    tag_include_scores: bool = False
    deepdanbooru_project: Path | None = None
    blip_model: str = "Salesforce/blip-image-captioning-base"
    blip_num_beams: int = bounded(1, 1, 16)
    blip_min_length: int = bounded(24, 0, 512)
    blip_max_length: int = bounded(48, 1, 512)
    wd14_model: str = "SmilingWolf/wd-swinv2-tagger-v3"
    wd14_general_threshold: float = bounded(0.35, 0.0, 1.0)
    wd14_character_threshold: float = bounded(0.85, 0.0, 1.0)
    wd14_rating_tags: bool = False
    wd14_character_first: bool = True
    wd14_exclude_tags: str = ""
    # running
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = bounded(4, 1, 256)
    allow_download: bool = True

    def written_folders(self) -> list[Path]:
        unset = str(self.destination) in ("", ".")  # then the destination is the source (see batch.py)
        into = self.source if self.in_place_captions or unset else self.destination
        return [*super().written_folders(), into]

    def validate(self) -> None:
        if self.autosize_min_dim > self.autosize_max_dim:
            raise ConfigError(
                f"autosize_min_dim {self.autosize_min_dim} > autosize_max_dim {self.autosize_max_dim}"
            )
        if self.blip_min_length > self.blip_max_length:
            raise ConfigError(
                f"blip_min_length {self.blip_min_length} > blip_max_length {self.blip_max_length}"
            )
        if len(set(self.captioners)) != len(self.captioners):
            raise ConfigError(f"captioners lists one twice: {self.captioners}")
        if "deepdanbooru" in self.captioners and self.deepdanbooru_project is None:
            raise ConfigError("the deepdanbooru captioner needs deepdanbooru_project (a project folder)")

    @property
    def changes_images(self) -> bool:
        return (
            self.resize_mode != "none" or self.crop != "none" or self.flip != "none" or self.split_oversized
        )


def run_preprocess_job(spec: JobSpec, host: Host, reporter: Reporter, control: Control) -> None:
    from liandan.preprocess.batch import run_preprocess

    if not isinstance(spec, PreprocessJob):
        raise ConfigError(f"expected a preprocess job, got {spec.kind!r}")
    with host.exclusive():  # the captioners use the device; inside A1111 its progress shows this job
        run_preprocess(spec, host.folders.models, reporter, control)


# What each setting is called in the tab; `python -m liandan preprocess --help` shows the same words.
LABELS: dict[str, str] = {
    "source": "Source folder (only read)",
    "destination": "Destination folder",
    "recursive": "Include subfolders",
    "in_place_captions": "Captions only, written beside the source images",
    "width": "Width",
    "height": "Height",
    "resize_mode": "Resize",
    "flip": "Create flipped copies",
    "output_format": "Save as",
    "split_oversized": "Split oversized images",
    "split_threshold": "Split threshold",
    "overlap_ratio": "Overlap ratio",
    "crop": "Crop (instead of resize)",
    "focal_face_weight": "Focal point: face weight",
    "focal_entropy_weight": "Focal point: entropy weight",
    "focal_edges_weight": "Focal point: edges weight",
    "focal_debug": "Save focal debug images",
    "autosize_min_dim": "Auto size: dimension lower bound",
    "autosize_max_dim": "Auto size: dimension upper bound",
    "autosize_min_area": "Area lower bound",
    "autosize_max_area": "Area upper bound",
    "autosize_objective": "Auto size objective",
    "autosize_error_threshold": "Error threshold",
    "existing_caption": "Existing caption",
    "caption_in_filename": "Caption in the file name instead of .txt",
    "tag_threshold": "Deepbooru score threshold (guides: 0.75)",
    "tag_sort": "Sort tags",
    "tag_filter": "Filter out tags",
    "tag_use_spaces": "Spaces instead of underscores",
    "tag_escape_brackets": "Escape brackets",
    "tag_drop_rating": "Drop rating: tags",
    "tag_include_scores": "Include scores",
    "deepdanbooru_project": "DeepDanbooru project folder (optional extra)",
    "blip_model": "BLIP model (repository or folder)",
    "blip_num_beams": "BLIP beams",
    "blip_min_length": "BLIP min length",
    "blip_max_length": "BLIP max length",
    "wd14_model": "WD14 model (repository or folder)",
    "wd14_general_threshold": "WD14 general threshold",
    "wd14_character_threshold": "Character threshold",
    "wd14_rating_tags": "WD14 rating tag",
    "wd14_character_first": "Character tags first",
    "wd14_exclude_tags": "WD14 excluded tags",
    "device": "Device",
    "batch_size": "Caption batch size",
    "allow_download": "Download missing weights",
    "captioners": "Captioners (joined)",
}
