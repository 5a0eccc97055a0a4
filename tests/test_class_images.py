"""Class images for prior preservation on the tiny SD1 model: made to the count, with A1111's PNG text,
reused by the next run, resumed after an interrupt with the images it would have made, refused before any is
written when the disk is too small."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest
import torch
from PIL import Image

from liandan.errors import DatasetError, TrainingStopped
from liandan.jobs import ConceptSpec
from liandan.models.tiny import tiny_bundle
from liandan.progress import Control, Reporter
from liandan.train import class_images
from liandan.train.class_images import ClassImageSettings, class_prompt, fill_class_folders

SETTINGS = ClassImageSettings(width=64, height=64, batch_size=2, seed=3, name="sks")


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle("sd1")


def _concept(folder: Path, count: int, **changes) -> ConceptSpec:
    fields = {"instance_folder": folder.parent / "me", "instance_prompt": "sks dog", "class_folder": folder,
              "class_prompt": "a photo of a dog", "num_class_images": count, "class_steps": 2}  # fmt: skip
    return ConceptSpec(**{**fields, **changes})


def _fill(bundle, concepts, control: Control | None = None, events: list | None = None) -> int:
    reporter = Reporter(events.append) if events is not None else Reporter()
    return fill_class_folders(bundle, concepts, SETTINGS, device=torch.device("cpu"), reporter=reporter,
                              control=control or Control())  # fmt: skip


def test_class_images_are_made_to_the_count_and_reused(bundle, tmp_path: Path) -> None:
    concept = _concept(tmp_path / "dogs", 3, class_negative_prompt="blurry")
    events: list = []
    assert _fill(bundle, [concept], events=events) == 3
    files = sorted((tmp_path / "dogs").glob("*.png"))
    assert len(files) == 3
    with Image.open(files[0]) as image:
        assert image.size == (64, 64)
        text = image.info["parameters"]
    assert text.startswith("a photo of a dog\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a")
    assert "Size: 64x64" in text
    progress = [e.extra["class_images_done"] for e in events if "class_images_done" in e.extra]
    assert progress == [2, 3]  # batches of 2
    assert _fill(bundle, [concept]) == 0  # the next run makes nothing
    assert sorted((tmp_path / "dogs").glob("*.png")) == files


def test_an_interrupted_fill_resumes_with_the_same_images(bundle, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    _fill(bundle, [_concept(whole, 4)])
    control = Control()
    part = tmp_path / "part"

    def stop_after_first_batch(event) -> None:
        if event.extra.get("class_images_done") == 2:
            control.interrupt()

    with pytest.raises(TrainingStopped, match="interrupted while making class images"):
        fill_class_folders(bundle, [_concept(part, 4)], SETTINGS, device=torch.device("cpu"),
                           reporter=Reporter(stop_after_first_batch), control=control)  # fmt: skip
    assert len(list(part.glob("*.png"))) == 2
    assert _fill(bundle, [_concept(part, 4)]) == 2
    assert [p.name for p in sorted(part.glob("*.png"))] == [p.name for p in sorted(whole.glob("*.png"))]
    for a, b in zip(sorted(part.glob("*.png")), sorted(whole.glob("*.png"))):
        assert a.read_bytes() == b.read_bytes()


def test_user_images_count_toward_the_number(bundle, tmp_path: Path) -> None:
    folder = tmp_path / "dogs"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "mine.png")
    assert _fill(bundle, [_concept(folder, 2)]) == 1
    assert len(list(folder.glob("*.png"))) == 2


def test_too_little_disk_space_is_refused_before_any_image(bundle, tmp_path: Path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(class_images.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 100_000))
    with pytest.raises(DatasetError, match=r"need about .* MiB .* but only 0 MiB is free"):
        _fill(bundle, [_concept(tmp_path / "dogs", 5)])
    assert not (tmp_path / "dogs").exists()


def test_filewords_and_name_in_the_class_prompt() -> None:
    concept = _concept(Path("/c"), 1, class_prompt="[filewords], a photo of a [name] dog")
    assert class_prompt(concept, "sks") == "a photo of a sks dog"


def test_a_dry_run_job_has_no_class_image_to_make(tmp_path: Path) -> None:
    from test_concepts import ConceptJob

    from liandan.train.class_images import existing_class_images, without_class_images_to_make

    full = tmp_path / "full"
    full.mkdir()
    Image.new("RGB", (64, 64), "red").save(full / "a.png")
    job = ConceptJob(concepts=(_concept(tmp_path / "empty", 3), _concept(full, 1)))
    dry = without_class_images_to_make(job)
    assert [c.has_class_images for c in dry.concepts] == [False, True]
    assert dry.concepts[1] == job.concepts[1]  # full already: kept
    assert all(existing_class_images(c) >= c.num_class_images for c in dry.concepts)
