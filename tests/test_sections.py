from __future__ import annotations

from liandan.jobs import TextualInversionJob
from liandan.ui.sections import LABELS, SECTIONS
from liandan.ui.spec_form import SpecForm


def test_the_shared_sections_place_every_training_data_and_preview_setting_once() -> None:
    """A field added to TrainSpec, DataSpec or PreviewSpec must get a place (and a label) here, or no
    training tab could reach it."""
    shared = [
        p
        for p in SpecForm(TextualInversionJob, "t").leaf_paths()
        if p.split(".")[0] in ("train", "data", "preview")
    ]
    placed = [path for _, rows in SECTIONS for row in rows for path in row]
    assert len(placed) == len(set(placed))
    assert set(placed) == {*shared, "log_dir", "clip_skip"}
    assert set(LABELS) == set(placed)


def test_more_datasets_and_a_validation_set_take_the_dataset_settings(tmp_path) -> None:
    import re

    import pytest

    from liandan.errors import ConfigError
    from liandan.jobs import DataSpec
    from liandan.ui.sections import with_more_data

    job = TextualInversionJob(name="cat", data=DataSpec(folder=tmp_path, width=64, height=96, flip=0.5))
    more = with_more_data(
        job, f"{tmp_path / 'class'} | 0.5 | 3\n\n{tmp_path / 'more'}", f"{tmp_path} | 20 | 2"
    )
    first, second = more.extra_data
    assert (first.folder, first.weight, first.repeats, first.width, first.height) == (
        tmp_path / "class", 0.5, 3, 64, 96
    )  # fmt: skip
    assert (second.weight, second.repeats, second.flip) == (1.0, 1, 0.5)
    assert (more.validation.folder, more.validation.every, more.validation.timesteps) == (tmp_path, 20, 2)
    assert with_more_data(job, "", " ").validation is None
    with pytest.raises(ConfigError, match="weight 'heavy'"):
        with_more_data(job, f"{tmp_path} | heavy", "")
    with pytest.raises(ConfigError, match=re.escape("is not 'folder' or 'folder | every | timesteps'")):
        with_more_data(job, "", f"{tmp_path} | 1 | 2 | 3")
    with pytest.raises(ConfigError, match="out of range"):
        with_more_data(job, f"{tmp_path} | 1000", "")
