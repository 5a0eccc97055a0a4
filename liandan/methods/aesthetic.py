"""Creating an aesthetic embedding: the mean of the unit-length CLIP image features of a folder's images.

No training loop (nothing is optimised): the images are read in batches through the vision tower(s) that
match the model's text encoder(s) (`models/clip_vision.py`), with a progress event per batch; an interrupt
stops between batches and writes nothing. The mean is normalised and saved by `formats/aesthetic.py` into
the host's aesthetic_embeddings folder, with the job's provenance beside it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from liandan.errors import ConfigError, FormatError
from liandan.jobs import AestheticJob, AestheticSettings, GenerateSpec, JobSpec
from liandan.progress import Control, ProgressEvent, Reporter

if TYPE_CHECKING:
    import torch

    from liandan.host.base import Host
    from liandan.models.aesthetic_conditioning import AestheticConditioner
    from liandan.models.bundle import ModelBundle
    from liandan.models.clip_vision import ClipVisionTower
    from liandan.models.conditioning import Conditioning

JOB = "aesthetic"


def mean_features(
    towers: list[ClipVisionTower],
    images: list[Path],
    batch_size: int,
    reporter: Reporter,
    control: Control,
) -> list[torch.Tensor] | None:
    """Per tower, the normalised mean of the images' unit-length features [1, D]; None when interrupted."""
    import torch

    from liandan.data.image_folder import open_image

    sums = [torch.zeros(1, tower.width) for tower in towers]
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    for index, batch in enumerate(batches):
        if control.interrupted:
            return None
        pictures = [open_image(path) for path in batch]
        for total, tower in zip(sums, towers):
            total += tower.image_features(pictures).sum(dim=0, keepdim=True)
        done = min((index + 1) * batch_size, len(images))
        reporter(ProgressEvent("step", job=JOB, step=done, total=len(images), message=f"{done} images"))
    return [torch.nn.functional.normalize(total, dim=-1) for total in sums]


def output_paths(spec: AestheticJob, folder: Path) -> list[Path]:
    formats = ("pt", "safetensors") if spec.file_format == "both" else (spec.file_format,)
    return [folder / f"{spec.name}.{file_format}" for file_format in formats]


def run_aesthetic_job(spec: JobSpec, host: Host, reporter: Reporter, control: Control) -> list[Path]:
    """Create the embedding of `spec`; returns the files written (none when interrupted)."""
    from liandan.data.image_folder import describe, scan_image_folder
    from liandan.formats.aesthetic import AestheticEmbedding, save_aesthetic
    from liandan.models.clip_vision import FEATURE_KEYS, load_towers
    from liandan.preprocess.captioners import pick_device
    from liandan.provenance import provenance, write_provenance

    if not isinstance(spec, AestheticJob):
        raise ConfigError(f"expected an aesthetic job, got {spec.kind!r}")
    folder = host.folders.aesthetic_embeddings
    paths = output_paths(spec, folder)
    existing = [path for path in paths if path.exists()]
    if existing and not spec.overwrite:
        raise FormatError(f"{existing[0]} exists; choose another name or set overwrite")
    scan = scan_image_folder(spec.folder, spec.recursive)  # DatasetError for a missing or image-less folder
    images = [record.path for record in scan.images]
    reporter(
        ProgressEvent(
            "start", job=JOB, total=len(images), message=describe(spec.folder, len(images), scan.skipped)
        )
    )
    ref = host.resolve_checkpoint(spec.model)
    # the whole job holds the host (inside A1111: its queue lock, so its progress and Interrupt are ours)
    with host.exclusive():
        with host.model_for_training(ref.path) as bundle:  # only its family and text widths are needed
            towers = load_towers(bundle, host.folders.models, spec.allow_download)
            family, keys = bundle.family, FEATURE_KEYS[bundle.family]
        clip_model = ", ".join(tower.source.name for tower in towers)
        device = pick_device(spec.device)
        features = mean_features([t.to(device) for t in towers], images, spec.batch_size, reporter, control)
        del towers
    if features is None:
        reporter(ProgressEvent("done", job=JOB, message="interrupted: no aesthetic embedding written"))
        return []
    embedding = AestheticEmbedding(
        dict(zip(keys, features)),
        family=family,
        clip_model=clip_model,
        image_count=len(images),
        name=spec.name,
    )
    written = [save_aesthetic(embedding, path) for path in paths]
    write_provenance(paths[0], provenance(spec, dataset_files=images, model={"checkpoint": str(ref.path)}))
    host.refresh("aesthetic_embeddings")
    reporter(ProgressEvent("done", job=JOB, step=len(images), total=len(images),
                           message=f"aesthetic embedding {spec.name!r} from {len(images)} images",
                           paths=tuple(written)))  # fmt: skip
    return written


# --- generating with an aesthetic embedding -------------------------------------------------------------


def find_aesthetic(name_or_path: str, folder: Path) -> Path:
    """An aesthetic embedding by name (in `folder`) or path; FormatError listing the names there if none."""
    from liandan.formats.aesthetic import list_aesthetic_embeddings

    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    known = list_aesthetic_embeddings(folder)
    if name_or_path in known:
        return known[name_or_path]
    names = ", ".join(known) or "none"
    raise FormatError(f"no aesthetic embedding {name_or_path!r} in {folder} (there: {names})")


class GenerateSession:
    """What repeated generations share: the model (per checkpoint file) and one conditioner per embedding
    file, so a prompt adapted once is a cache hit the next time. Standalone only (it keeps the model)."""

    def __init__(self) -> None:
        self._model: tuple[tuple[Path, float], ModelBundle] | None = None
        self._conditioners: dict[tuple[Path, float], AestheticConditioner] = {}

    def bundle(self, host: Host, model: str) -> ModelBundle:
        ref = host.resolve_checkpoint(model)
        key = (ref.path.resolve(), ref.path.stat().st_mtime)
        if self._model is None or self._model[0] != key:
            self._model, self._conditioners = None, {}
            with host.model_for_training(ref.path) as bundle:
                self._model = (key, bundle)
        return self._model[1]

    def conditioner(self, host: Host, bundle: ModelBundle, spec: GenerateSpec) -> AestheticConditioner:
        from liandan.formats.aesthetic import load_aesthetic
        from liandan.models.aesthetic_conditioning import make_conditioner

        path = find_aesthetic(spec.aesthetic, host.folders.aesthetic_embeddings)
        key = (path.resolve(), path.stat().st_mtime)
        if key not in self._conditioners:
            embedding = load_aesthetic(path)
            models = host.folders.models
            self._conditioners[key] = make_conditioner(bundle, embedding, models, spec.allow_download)
        return self._conditioners[key]


def generate_image(spec: GenerateSpec, host: Host, session: GenerateSession | None = None) -> Path:
    """Render `spec` with our sampler and write it as a PNG with A1111's infotext; returns its path."""
    from liandan.atomic_files import write_atomic
    from liandan.models.aesthetic_conditioning import infotext_fields
    from liandan.models.sampling import generate

    session = session or GenerateSession()
    bundle = session.bundle(host, spec.model)
    settings = spec.aesthetic_settings
    hook, extra = None, {}
    if spec.aesthetic and settings.active:
        conditioner = session.conditioner(host, bundle, spec)
        hook = functools.partial(_steer, conditioner, settings, spec.clip_skip)
        extra = infotext_fields(conditioner.embedding.name, settings)
    image = generate(
        bundle, spec.prompt, spec.negative_prompt, steps=spec.steps, cfg_scale=spec.cfg_scale, seed=spec.seed,
        width=spec.width, height=spec.height, sampler=spec.sampler, clip_skip=spec.clip_skip,
        conditioning_hook=hook, extra_infotext=extra,
    )  # fmt: skip
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", image.info["parameters"])
    out = spec.out or host.folders.logs / "generate" / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.seed}.png"
    return write_atomic(out, lambda f: image.save(f, format="PNG", pnginfo=info))


def _steer(
    conditioner: AestheticConditioner,
    settings: AestheticSettings,
    clip_skip: int,
    prompts: Sequence[str],
    plain: Conditioning,
) -> Conditioning:
    return conditioner.apply(prompts, plain, settings, clip_skip)
