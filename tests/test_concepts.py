from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from data_helpers import gradient_image, save, tiny_vae

from liandan.data.concepts import (
    concept_data_specs,
    concepts_from_json,
    concepts_to_json,
    read_concepts_file,
    write_concepts_file,
)
from liandan.data.dataset import TrainingDataset
from liandan.errors import ConfigError
from liandan.jobs import ConceptJobSpec, ConceptSpec, DataSpec
from liandan.spec import resolve_paths
from liandan.train.training_job import generated_folders, job_data_specs


def _images(folder: Path, captions: list[str]) -> Path:
    for i, caption in enumerate(captions):
        save(gradient_image((64, 64), seed=i), folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return folder


def test_literal_prompt_replaces_the_template_and_fills_filewords(tmp_path: Path) -> None:
    folder = _images(tmp_path / "dog", ["on grass", "on sand"])
    spec = DataSpec(folder=folder, width=64, height=64, prompt="a photo of [name] dog, [filewords]")
    ds = TrainingDataset(spec, name="sks", vae=tiny_vae())
    assert sorted(ds.prompt(i, 0) for i in range(2)) == [
        "a photo of sks dog, on grass",
        "a photo of sks dog, on sand",
    ]
    assert ds.template.record() == {"file": "", "lines": ["a photo of [name] dog, [filewords]"]}


def test_concepts_become_instance_and_class_datasets_with_their_weights(tmp_path: Path) -> None:
    shared = DataSpec(width=64, height=64, flip=0.5, template="liandan_subject.txt")
    dog = ConceptSpec(
        instance_folder=tmp_path / "dog",
        instance_prompt="sks dog",
        class_folder=tmp_path / "dogs",
        class_prompt="a dog",
        repeats=5,
        loss_weight=2.0,
    )
    cat = ConceptSpec(instance_folder=tmp_path / "cat", instance_prompt="zwx cat")
    specs = concept_data_specs([dog, cat], shared, prior_loss_weight=0.5)
    got = [(s.folder.name, s.prompt, s.repeats, s.weight) for s in specs]
    assert got == [("dog", "sks dog", 5, 2.0), ("dogs", "a dog", 1, 1.0), ("cat", "zwx cat", 1, 1.0)]
    assert all(s.flip == 0.5 and s.width == 64 for s in specs)  # the shared options reach every dataset


def test_prior_weight_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    concept = ConceptSpec(
        instance_folder=tmp_path / "a", instance_prompt="x", class_folder=tmp_path / "b", class_prompt="y",
        loss_weight=0.05,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"prior_loss_weight × loss_weight = 0.005"):
        concept_data_specs([concept], DataSpec(), prior_loss_weight=0.1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"instance_prompt": "x"}, "needs an instance folder"),
        ({"instance_folder": Path("a"), "instance_prompt": "  "}, "needs an instance prompt"),
        (
            {
                "instance_folder": Path("a"),
                "instance_prompt": "x",
                "class_folder": Path("./a"),
                "class_prompt": "y",
            },
            "the class folder is the instance folder",
        ),
        (
            {"instance_folder": Path("a"), "instance_prompt": "x", "class_folder": Path("b")},
            "no class prompt",
        ),
        (
            {"instance_folder": Path("a"), "instance_prompt": "x", "num_class_images": 5},
            "class_folder is empty",
        ),
        ({"instance_folder": Path("a"), "instance_prompt": "x", "class_cfg_scale": 0.5}, "out of range"),
    ],
)
def test_bad_concepts_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConceptSpec(**fields)


def test_concepts_list_round_trip(tmp_path: Path) -> None:
    concepts = (
        ConceptSpec(
            instance_folder=tmp_path / "dog",
            instance_prompt="sks dog, [filewords]",
            class_folder=tmp_path / "dogs",
            class_prompt="a dog",
            num_class_images=50,
            class_negative_prompt="blurry",
            class_cfg_scale=5.0,
            class_steps=30,
            repeats=3,
            loss_weight=0.5,
        ),
        ConceptSpec(instance_folder=tmp_path / "cat", instance_prompt="zwx cat"),
    )
    path = write_concepts_file(tmp_path / "concepts.json", concepts)
    entries = json.loads(path.read_text())
    assert entries[0]["instance_data_dir"] == str(tmp_path / "dog")
    assert entries[0]["class_guidance_scale"] == 5.0 and entries[0]["class_infer_steps"] == 30
    assert entries[1]["class_data_dir"] == ""
    assert read_concepts_file(path) == concepts


def test_reads_the_dreambooth_extension_format(tmp_path: Path) -> None:
    _images(tmp_path / "me", ["a", "b", "c"])
    db_config = {
        "concepts_list": [
            {
                "class_data_dir": "people",
                "class_guidance_scale": 7.5,
                "class_infer_steps": 40,
                "class_negative_prompt": "",
                "class_prompt": "photo of woman",
                "class_token": "",
                "instance_data_dir": "me",
                "instance_prompt": "ohwx woman",
                "instance_token": "",
                "is_valid": True,
                "n_save_sample": 1,
                "num_class_images_per": 20,
                "sample_seed": -1,
                "save_sample_prompt": "photo of ohwx woman",
            }
        ]
    }
    path = tmp_path / "db_config.json"
    path.write_text(json.dumps(db_config))
    (concept,) = read_concepts_file(path)
    assert concept.instance_folder == tmp_path / "me" and concept.class_folder == tmp_path / "people"
    assert concept.num_class_images == 60  # 20 per instance image, 3 images
    assert concept.class_cfg_scale == 7.5 and concept.class_steps == 40
    assert concept.instance_prompt == "ohwx woman" and concept.class_prompt == "photo of woman"


def test_reads_the_diffusers_script_format() -> None:
    text = json.dumps([{"instance_prompt": "sks dog", "class_prompt": "a dog", "instance_data_dir": "/d/dog",
                        "class_data_dir": "/d/dogs"}])  # fmt: skip
    (concept,) = concepts_from_json(text)
    assert concept.class_folder == Path("/d/dogs") and concept.num_class_images == 0
    assert concepts_from_json(concepts_to_json([concept])) == (concept,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ("[1]", "must be an object"),
        ('[{"instance_data_dir": "a", "instance_promt": "x"}]', "unknown concepts_list key"),
        ('[{"instance_data_dir": "a"}]', "needs an instance prompt"),
        ('[{"instance_data_dir": 3, "instance_prompt": "x"}]', "expected a folder path"),
    ],
)
def test_bad_concepts_lists_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        concepts_from_json(text)


@dataclass(frozen=True)
class ConceptJob(ConceptJobSpec):
    """The shape of a concept job (DreamBooth, LoRA): concepts beside the usual data sections."""

    method_title: ClassVar[str] = "concept"
    artifact_noun: ClassVar[str] = "result"
    name: str = "result"
    data: DataSpec = field(default_factory=DataSpec)
    extra_data: tuple[DataSpec, ...] = ()


def test_a_concept_job_trains_its_concepts_then_extra_data(tmp_path: Path) -> None:
    dog = ConceptSpec(
        instance_folder=tmp_path / "dog", instance_prompt="sks dog", class_folder=tmp_path / "dogs",
        class_prompt="a dog", num_class_images=4,
    )  # fmt: skip
    job = ConceptJob(
        concepts=(dog,),
        prior_loss_weight=0.5,
        data=DataSpec(width=64),
        extra_data=(DataSpec(folder=tmp_path),),
    )
    specs = job_data_specs(job)
    assert [(s.folder, s.weight, s.width) for s in specs] == [
        (tmp_path / "dog", 1.0, 64),
        (tmp_path / "dogs", 0.5, 64),
        (tmp_path, 1.0, 512),
    ]
    assert generated_folders(job) == {tmp_path / "dogs"} == set(job.written_folders())
    plain = ConceptJob(data=DataSpec(folder=tmp_path / "x"))
    assert [s.folder for s in job_data_specs(plain)] == [tmp_path / "x"]


def test_a_concept_job_refuses_mixed_up_folders(tmp_path: Path) -> None:
    dog = ConceptSpec(instance_folder=tmp_path / "dog", instance_prompt="sks dog")
    with pytest.raises(ConfigError, match=r"either concepts or data\.folder"):
        ConceptJob(concepts=(dog,), data=DataSpec(folder=tmp_path / "x"))
    cat = ConceptSpec(
        instance_folder=tmp_path / "cat", instance_prompt="zwx cat", class_folder=tmp_path / "dog",
        class_prompt="a cat",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="instance folder of another concept"):
        ConceptJob(concepts=(dog, cat))


def test_concepts_from_a_job_file_resolve_against_the_file(tmp_path: Path) -> None:
    # what [[concepts]] tables of a TOML file parse to
    entry = {"instance_folder": "me", "instance_prompt": "ohwx", "class_folder": "people"}
    entry |= {"class_prompt": "a person", "num_class_images": 10}
    job = resolve_paths(ConceptJob.from_dict({"concepts": [entry]}), tmp_path)
    (concept,) = job.concepts
    assert concept.instance_folder == tmp_path / "me" and concept.class_folder == tmp_path / "people"
    assert concept.num_class_images == 10
