"""Run a preprocess job over a folder: open, transform, save, caption in batches, and summarise.

The source folder is never written: the destination must lie outside it, except for in-place captions,
where only `<image>.txt` files are written beside the sources. Every file is written atomically. One
bad picture is skipped with its reason; the batch goes on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from liandan.atomic_files import write_text_atomic
from liandan.errors import ConfigError, DatasetError
from liandan.preprocess.autosize_crop import AutosizeSettings, autosize_crop
from liandan.preprocess.captioners import Captioner, build_captioners, pick_device
from liandan.preprocess.captions_policy import (
    apply_policy,
    caption_file_name,
    join_captions,
    read_existing_caption,
)
from liandan.preprocess.focal_crop import FocalSettings, face_detector_problem, focal_crop
from liandan.preprocess.image_ops import (
    IMAGE_SUFFIXES,
    ImageSkipped,
    flipped_copies,
    is_image_name,
    open_image,
    resize,
    save_image,
)
from liandan.preprocess.job import PreprocessJob
from liandan.preprocess.split import should_split, split_oversized
from liandan.preprocess.weights import YUNET, find_weights
from liandan.progress import Control, ProgressEvent, Reporter

log = logging.getLogger(__name__)

SUMMARY_FILE = "preprocess_summary.json"
DEBUG_FOLDER = "focal-debug"  # a subfolder, so a (non-recursive) training run never reads debug images


@dataclass
class Summary:
    processed: int = 0
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # written file → the source it came from
    interrupted: bool = False

    def text(self) -> str:
        head = f"{self.processed} processed, {len(self.written)} files written, {len(self.skipped)} skipped"
        if self.interrupted:
            head += " (interrupted)"
        return "\n".join([head, *(f"skipped {path}: {reason}" for path, reason in self.skipped)])

    def to_dict(self) -> dict[str, object]:
        return {
            "processed": self.processed,
            "written": [str(p) for p in self.written],
            "skipped": [{"file": str(p), "reason": r} for p, r in self.skipped],
            "origins": self.origins,
            "interrupted": self.interrupted,
        }


@dataclass
class _Pending:
    """One output waiting for its caption (and, with captions in names, for its file name)."""

    source: Path
    image: Image.Image
    stem_target: Path  # destination path without suffix
    existing: str | None
    save_image: bool


def check_folders(job: PreprocessJob) -> tuple[Path, Path]:
    """Resolved (source, destination); refuses anything that could write into the source."""
    if job.source == Path():  # an empty field, not "the folder the program happens to run in"
        raise ConfigError("choose a source folder: the folder of pictures to prepare")
    source = job.source.expanduser().resolve()
    if not source.is_dir():
        raise DatasetError(f"source folder {job.source} does not exist or is not a folder")
    destination = job.destination.expanduser().resolve() if str(job.destination) not in ("", ".") else source
    inside = destination == source or destination.is_relative_to(source)
    if job.in_place_captions:
        if destination != source:
            raise ConfigError(f"in-place captions write beside the sources: destination must be {source}")
        if job.changes_images or job.caption_in_filename:
            raise ConfigError(
                "in-place captions only write .txt files: turn off resize, crops, flips, split and "
                "captions in file names, or choose a destination outside the source folder"
            )
        if not job.captioners:
            raise ConfigError("in-place captions: choose at least one captioner")
    elif inside:
        raise ConfigError(
            f"destination {destination} is the source folder or inside it; the source is never written. "
            "Choose another destination (or in-place captions to write only .txt files beside the images)"
        )
    return source, destination


def list_files(source: Path, recursive: bool) -> list[Path]:
    pattern = source.rglob("*") if recursive else source.glob("*")
    hidden = lambda p: any(part.startswith(".") for part in p.relative_to(source).parts)  # noqa: E731
    return sorted(p for p in pattern if p.is_file() and not hidden(p))


def transform(
    image: Image.Image, job: PreprocessJob, yunet: Path | None
) -> tuple[list[tuple[str, Image.Image]], Image.Image | None]:
    """(name suffix, image) for each output of one source, and the focal-crop debug image if asked for.
    The list is empty when the auto-sized crop finds no size within its error threshold."""
    w, h = job.width, job.height
    debug = None
    if job.split_oversized and should_split(image.size, w, h, job.split_threshold):
        tiles = split_oversized(image, w, h, job.overlap_ratio)
        base = [(f"split-{i + 1:02d}", tile) for i, tile in enumerate(tiles)]
    elif job.crop == "focal":
        focal = FocalSettings(
            w,
            h,
            job.focal_face_weight,
            job.focal_entropy_weight,
            job.focal_edges_weight,
            job.focal_debug,
            yunet,
        )
        crop, debug = focal_crop(image, focal)
        base = [("", crop)]
    elif job.crop == "autosize":
        autosize = AutosizeSettings(
            job.autosize_min_dim,
            job.autosize_max_dim,
            job.autosize_min_area,
            job.autosize_max_area,
            job.autosize_objective,
            job.autosize_error_threshold,
        )
        cropped = autosize_crop(image, autosize)
        base = [] if cropped is None else [("", cropped)]
    else:
        base = [("", resize(image, w, h, job.resize_mode))]
    outputs = list(base)
    for suffix, picture in base:
        for flip_suffix, flipped in flipped_copies(picture, job.flip):
            outputs.append((f"{suffix}-{flip_suffix}" if suffix else flip_suffix, flipped))
    return outputs, debug


class _Writer:
    """Names, saves and captions outputs; captions run in batches of `job.batch_size`."""

    def __init__(
        self,
        job: PreprocessJob,
        source: Path,
        destination: Path,
        captioners: list[Captioner],
        summary: Summary,
    ) -> None:
        self.job, self.source, self.destination = job, source, destination
        self.captioners = captioners
        self.summary = summary
        self.pending: list[_Pending] = []
        self.used: set[Path] = set()
        self.index = 0

    def add(self, path: Path, outputs: list[tuple[str, Image.Image]], debug: Image.Image | None) -> None:
        existing = read_existing_caption(path)
        if self.job.in_place_captions:
            self.pending.append(
                _Pending(path, outputs[0][1], path.with_suffix(""), existing, save_image=False)
            )
        else:
            folder = self.destination / path.parent.relative_to(self.source)
            for suffix, image in outputs:
                stem = f"{path.stem}-{suffix}" if suffix else path.stem
                self.pending.append(_Pending(path, image, folder / stem, existing, save_image=True))
            if debug is not None:
                target = self._unique(folder / DEBUG_FOLDER / f"{path.stem}.png")
                self._record(save_image(debug, target, "png"), path)
        if len(self.pending) >= self.job.batch_size:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        # "keep" with an existing caption needs no model run at all
        needs_model = [p for p in batch if not (self.job.existing_caption == "keep" and p.existing)]
        generated: dict[int, str] = {id(p): "" for p in batch}
        if self.captioners and needs_model:
            per_captioner = [c.caption([p.image for p in needs_model]) for c in self.captioners]
            for i, item in enumerate(needs_model):
                generated[id(item)] = join_captions([texts[i] for texts in per_captioner])
        for item in batch:
            if self.captioners:
                caption = apply_policy(item.existing, generated[id(item)], self.job.existing_caption)
            else:
                caption = item.existing or ""  # no captioner: the source's caption travels with its images
            self._write(item, caption)

    def _write(self, item: _Pending, caption: str) -> None:
        fmt = self.job.output_format
        if self.job.caption_in_filename:
            self.index += 1
            name = caption_file_name(self.index, caption or item.source.stem, f".{fmt}")
            target = self._unique(item.stem_target.parent / name)
            self._record(save_image(item.image, target, fmt), item.source)
            return
        caption_target = item.stem_target.with_name(f"{item.stem_target.name}.txt")
        if item.save_image:
            image_target = self._unique(item.stem_target.with_name(f"{item.stem_target.name}.{fmt}"))
            self._record(save_image(item.image, image_target, fmt), item.source)
            caption_target = image_target.with_suffix(".txt")
        if caption:
            self._record(write_text_atomic(self._guard(caption_target), caption), item.source)

    def _unique(self, target: Path) -> Path:
        """A name not yet written in this run (a.png and a.jpg both become a.png otherwise)."""
        candidate, n = target, 1
        while candidate in self.used:
            n += 1
            candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        self.used.add(candidate)
        return self._guard(candidate)

    def _guard(self, target: Path) -> Path:
        """Last line of defence: nothing but in-place .txt captions may land inside the source."""
        in_source = target.resolve().is_relative_to(self.source)
        if in_source and not (self.job.in_place_captions and target.suffix == ".txt"):
            raise ConfigError(f"refusing to write {target}: it is inside the source folder {self.source}")
        return target

    def _record(self, written: Path, source: Path) -> None:
        self.summary.written.append(written)
        self.summary.origins[str(written)] = str(source)


def run_preprocess(
    job: PreprocessJob, models_dir: Path, reporter: Reporter | None = None, control: Control | None = None
) -> Summary:
    """Process every image of `job.source` (recursively if asked); returns what was written and skipped."""
    from tqdm import tqdm

    reporter = reporter or Reporter()
    source, destination = check_folders(job)
    files = list_files(source, job.recursive)
    images = [f for f in files if is_image_name(f)]
    summary = Summary()
    for other in files:
        if not is_image_name(other) and other.suffix.lower() != ".txt":
            summary.skipped.append((other, f"not an image file ({other.suffix or 'no extension'})"))
    if not images:
        raise DatasetError(f"no images in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")

    yunet = find_weights(YUNET, models_dir)
    if job.crop == "focal" and job.focal_face_weight > 0 and (problem := face_detector_problem(yunet)):
        raise ConfigError(problem)  # before any work, not as an AttributeError at the first image
    captioners = build_captioners(job, models_dir, pick_device(job.device))
    writer = _Writer(job, source, destination, captioners, summary)
    reporter(ProgressEvent("start", job="preprocess", total=len(images), message=f"{len(images)} images"))
    done = 0  # images handled: all of them, or fewer after an interrupt
    for step, path in enumerate(tqdm(images, desc="preprocess", unit="image", disable=None), start=1):
        if control is not None and control.interrupted:
            summary.interrupted = True
            break
        done = step
        try:
            outputs, debug = transform(open_image(path), job, yunet)
        except ImageSkipped as e:
            summary.skipped.append((path, str(e)))
            continue
        except (ValueError, OSError, MemoryError) as e:
            summary.skipped.append((path, f"{type(e).__name__}: {e}"))
            continue
        if not outputs:
            summary.skipped.append((path, "auto-sized crop: no size within the error threshold"))
            continue
        summary.processed += 1
        writer.add(path, outputs, debug)
        reporter(ProgressEvent("step", job="preprocess", step=step, total=len(images)))
    writer.flush()
    if not job.in_place_captions:
        summary_path = write_text_atomic(destination / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=1))
        log.info("preprocess summary written to %s", summary_path)
    reporter(ProgressEvent("done", job="preprocess", step=done, total=len(images),
                           message=summary.text(), paths=tuple(summary.written)))  # fmt: skip
    return summary
