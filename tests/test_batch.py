from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import tree_hash
from PIL import Image
from preprocess_models import make_deepbooru_file, make_wd14_folder

from liandan.errors import ConfigError, DatasetError
from liandan.preprocess.batch import SUMMARY_FILE, run_preprocess
from liandan.preprocess.job import PreprocessJob
from liandan.progress import Control, ProgressEvent, Reporter

TAGS = ["long_hair", "hat", "smile"]


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (120, 80), "red").save(src / "a photo, (1).png")
    Image.new("RGB", (60, 90), "blue").save(src / "b.jpg")
    Image.new("RGB", (50, 50), "green").save(src / "sub" / "c.png")
    (src / "b.txt").write_text("blue thing", encoding="utf-8")
    (src / "notes.json").write_text("{}")
    return src


@pytest.fixture
def models(tmp_path) -> Path:
    make_deepbooru_file(tmp_path / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt", TAGS)
    return tmp_path / "models"


def test_resize_flip_caption_recursive_without_touching_the_source(source, models, tmp_path) -> None:
    before = tree_hash(source)
    events = []
    job = PreprocessJob(source=source, destination=tmp_path / "out", recursive=True, width=64, height=64,
                        flip="horizontal", captioners=("deepbooru",), existing_caption="prepend",
                        batch_size=3)  # fmt: skip
    summary = run_preprocess(job, models, Reporter(events.append))
    assert tree_hash(source) == before
    out = tmp_path / "out"
    assert summary.processed == 3
    assert [(p.name, r) for p, r in summary.skipped] == [("notes.json", "not an image file (.json)")]
    for stem in ("a photo, (1)", "a photo, (1)-flip-h", "b", "b-flip-h", "sub/c", "sub/c-flip-h"):
        with Image.open(out / f"{stem}.png") as im:
            assert im.size == (64, 64)
        expected = "blue thing, long hair, smile" if stem.startswith("b") else "long hair, smile"
        assert (out / f"{stem}.txt").read_text(encoding="utf-8") == expected
    recorded = json.loads((out / SUMMARY_FILE).read_text())
    assert recorded["origins"][str(out / "b-flip-h.png")] == str(source / "b.jpg")
    assert events[0].kind == "start" and events[-1].kind == "done"
    assert "3 processed" in events[-1].message


def test_destination_inside_or_equal_to_source_is_refused(source, models) -> None:
    for destination in (source, source / "out", source / "sub"):
        with pytest.raises(ConfigError, match="source is never written"):
            run_preprocess(PreprocessJob(source=source, destination=destination), models)
    with pytest.raises(DatasetError, match="does not exist"):
        run_preprocess(PreprocessJob(source=source / "nope", destination=source.parent / "o"), models)
    with pytest.raises(ConfigError, match="choose a source folder"):  # a field left empty in the tab
        run_preprocess(PreprocessJob(destination=source.parent / "o"), models)


def test_in_place_captions_write_only_txt_files(source, models) -> None:
    before = tree_hash(source)
    job = PreprocessJob(source=source, destination=source, in_place_captions=True, resize_mode="none",
                        captioners=("deepbooru",), existing_caption="keep")  # fmt: skip
    summary = run_preprocess(job, models)
    after = tree_hash(source)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {"a photo, (1).txt"}  # b.txt kept, sub/ not recursed
    assert (source / "a photo, (1).txt").read_text() == "long hair, smile"
    assert all(p.suffix == ".txt" for p in summary.written)
    with pytest.raises(ConfigError, match=r"only write \.txt"):
        run_preprocess(job.replace(resize_mode="crop"), models)


def test_caption_in_file_name(source, models, tmp_path) -> None:
    job = PreprocessJob(source=source, destination=tmp_path / "named", width=32, height=32,
                        captioners=("deepbooru",), caption_in_filename=True)  # fmt: skip
    run_preprocess(job, models)
    names = sorted(p.name for p in (tmp_path / "named").glob("*.png"))
    assert names == ["00001-long hair, smile.png", "00002-long hair, smile.png"]


def test_joined_captioners_split_and_autosize(source, models, tmp_path) -> None:
    Image.new("RGB", (60, 400), "white").save(source / "tall.png")
    wd14 = make_wd14_folder(tmp_path / "wd14")
    job = PreprocessJob(source=source, destination=tmp_path / "o", width=64, height=64, split_oversized=True,
                        captioners=("deepbooru", "wd14"), wd14_model=str(wd14))  # fmt: skip
    summary = run_preprocess(job, models)
    tiles = sorted((tmp_path / "o").glob("tall-split-*.png"))
    assert len(tiles) >= 3
    assert (
        (tmp_path / "o" / "tall-split-01.txt").read_text().startswith("long hair, smile, hatsune miku, 1girl")
    )
    auto = job.replace(destination=tmp_path / "auto", split_oversized=False, crop="autosize", captioners=(),
                       autosize_error_threshold=0.0)  # fmt: skip
    summary = run_preprocess(auto, models)
    reasons = {p.name: r for p, r in summary.skipped}
    assert "error threshold" in reasons["tall.png"]  # 60×400 has no exact 64-multiple aspect in bounds
    with Image.open(tmp_path / "auto" / "a photo, (1).png") as im:
        assert im.size == (768, 512)  # 3:2 exactly, the largest within 640² area


def test_interrupt_stops_between_images(source, models, tmp_path) -> None:
    control = Control()
    control.interrupt()
    events: list[ProgressEvent] = []
    summary = run_preprocess(
        PreprocessJob(source=source, destination=tmp_path / "o"), models, Reporter(events.append), control
    )
    assert summary.interrupted and summary.processed == 0
    assert events[-1].kind == "done" and events[-1].step == 0  # the job says how far it got


def test_same_stem_sources_do_not_overwrite_each_other(tmp_path, models) -> None:
    src = tmp_path / "s"
    src.mkdir()
    Image.new("RGB", (10, 10), "red").save(src / "x.png")
    Image.new("RGB", (10, 10), "blue").save(src / "x.jpg")
    run_preprocess(PreprocessJob(source=src, destination=tmp_path / "o", width=16, height=16), models)
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["x-2.png", "x.png"]
