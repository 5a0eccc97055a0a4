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


def test_the_plan_memory_button_shows_the_plan_in_the_tab(tmp_path, monkeypatch) -> None:
    import torch
    from test_textual_inversion_tab import _Tab

    from liandan.host.standalone import StandaloneHost
    from liandan.job_runner import JobRunner
    from liandan.train import planner
    from liandan.ui.components import UIContext

    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    assert f"{tab.prefix}_plan_message" in tab.by_id
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    shown = tab.call("plan", train_name="cat", data_folder=str(tmp_path))
    assert "cannot measure" in shown and "liandan-error" not in shown
    assert "liandan-error" in tab.call("plan", train_name="cat", train_max_steps=0)  # a bad form: no plan

    def fake_plan(job, host):  # what the planner found is what the tab shows
        return planner.Plan(1.0, frozenset(), message=f"plan for {job.name} at batch {job.train.batch_size}")

    monkeypatch.setattr(planner, "plan_job", fake_plan)
    assert "plan for cat at batch 3" in tab.call("plan", train_name="cat", data_folder=str(tmp_path),
                                                 train_batch_size=3)  # fmt: skip
    runner.close(timeout=5)
