"""DreamBooth concepts: the datasets they train, and the common `concepts_list` JSON both ways.

A concept (`jobs.ConceptSpec`) becomes one dataset of its instance images, trained with its instance prompt
at its `loss_weight`, and, with prior preservation, one of its class images with the class prompt at
`prior_loss_weight * loss_weight`. Everything else about how images are read (size, buckets, flips, latent
cache, tag shuffle) is the job's shared `[data]` section.

`concepts_list` is the list the DreamBooth extension and the diffusers DreamBooth scripts read and write:
`[{"instance_data_dir", "instance_prompt", "class_data_dir", "class_prompt", "num_class_images",
"class_negative_prompt", "class_guidance_scale", "class_infer_steps", ...}]`. The extension's
`num_class_images_per` (class images per instance image) is multiplied out on import. Its settings with no
counterpart here (sample prompts, instance/class tokens) are ignored on import; a key neither format knows is
an error (a typo must not pass silently). We export the common keys plus `repeats` and `loss_weight`,
which other tools ignore.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from liandan.atomic_files import write_text_atomic
from liandan.errors import ConfigError
from liandan.jobs import ConceptSpec, DataSpec

# concepts_list key -> ConceptSpec field
KEYS = {
    "instance_data_dir": "instance_folder",
    "instance_prompt": "instance_prompt",
    "class_data_dir": "class_folder",
    "class_prompt": "class_prompt",
    "num_class_images": "num_class_images",
    "class_negative_prompt": "class_negative_prompt",
    "class_guidance_scale": "class_cfg_scale",
    "class_infer_steps": "class_steps",
    "repeats": "repeats",
    "loss_weight": "loss_weight",
}
PER_IMAGE_KEY = "num_class_images_per"
# the DreamBooth extension's concept settings that mean nothing here (its own sample images and tokens)
IGNORED_KEYS = frozenset(
    {
        "class_token",
        "instance_token",
        "is_valid",
        "max_steps",
        "n_save_sample",
        "sample_seed",
        "save_guidance_scale",
        "save_infer_steps",
        "save_sample_negative_prompt",
        "save_sample_prompt",
        "save_sample_template",
        "file_prompt_contents",
    }
)


def concept_data_specs(
    concepts: Sequence[ConceptSpec], shared: DataSpec, prior_loss_weight: float
) -> list[DataSpec]:
    """The datasets the loop trains, instance then class dataset of each concept in order."""
    specs = []
    for concept in concepts:
        specs.append(
            shared.replace(
                folder=concept.instance_folder,
                prompt=concept.instance_prompt,
                repeats=concept.repeats,
                weight=concept.loss_weight,
            )
        )
        if concept.has_class_images:
            weight = prior_loss_weight * concept.loss_weight
            if not 0.01 <= weight <= 100:
                raise ConfigError(
                    f"concept {str(concept.instance_folder)!r}: prior_loss_weight × loss_weight = {weight:g} "
                    "is out of range [0.01, 100]"
                )
            specs.append(
                shared.replace(
                    folder=concept.class_folder, prompt=concept.class_prompt, repeats=1, weight=weight
                )
            )
    return specs


def concept_from_entry(entry: Mapping[str, Any], base: Path | None = None) -> ConceptSpec:
    """One `concepts_list` entry as a concept; relative folders are taken from `base` (the file's folder)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"a concepts_list entry must be an object, got {entry!r}")
    unknown = sorted(set(entry) - set(KEYS) - IGNORED_KEYS - {PER_IMAGE_KEY})
    if unknown:
        raise ConfigError(f"unknown concepts_list key(s): {', '.join(unknown)}; known: {', '.join(KEYS)}")
    values: dict[str, Any] = {}
    for key, name in KEYS.items():
        value = entry.get(key)
        if value is None or value == "":  # the extension writes null or "" for an unset field
            continue
        if name.endswith("_folder"):
            if not isinstance(value, str):
                raise ConfigError(f"concepts_list {key} = {value!r}: expected a folder path")
            path = Path(value).expanduser()
            value = base / path if base is not None and not path.is_absolute() else path
        values[name] = value
    per_image = entry.get(PER_IMAGE_KEY) or 0
    if per_image and "num_class_images" not in values:
        values["num_class_images"] = per_image * _count_images(values.get("instance_folder"))
    return ConceptSpec.from_dict(values)


def _count_images(folder: Path | None) -> int:
    from liandan.data.image_folder import scan_image_folder

    if folder is None:
        raise ConfigError(f"{PER_IMAGE_KEY} needs an instance_data_dir to count its images")
    return len(scan_image_folder(folder).images)


def concept_to_entry(concept: ConceptSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key, name in KEYS.items():
        value = getattr(concept, name)
        entry[key] = ("" if value == Path() else str(value)) if isinstance(value, Path) else value
    return entry


def concepts_from_json(text: str, base: Path | None = None) -> tuple[ConceptSpec, ...]:
    """Concepts from `concepts_list` JSON: a list of entries, or an object with a "concepts_list" list (as the
    extension's db_config.json holds it)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"the concepts list is not valid JSON: {e}") from e
    if isinstance(data, Mapping) and "concepts_list" in data:
        data = data["concepts_list"]
    if not isinstance(data, list) or not data:
        raise ConfigError("a concepts list is a non-empty JSON list of concepts (objects)")
    return tuple(concept_from_entry(entry, base) for entry in data)


def concepts_to_json(concepts: Sequence[ConceptSpec]) -> str:
    return json.dumps([concept_to_entry(c) for c in concepts], indent=2) + "\n"


def read_concepts_file(path: Path) -> tuple[ConceptSpec, ...]:
    """A concepts_list .json file; its relative folders are relative to the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read concepts list {path}: {e.strerror or e}") from e
    return concepts_from_json(text, path.resolve().parent)


def write_concepts_file(path: Path, concepts: Sequence[ConceptSpec]) -> Path:
    return write_text_atomic(path, concepts_to_json(concepts))
