"""The APT tab: a control for every setting of AptJob, Create makes the pair (and refuses an existing
negative), Train runs a job that ends with the pair saved and previews shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_textual_inversion_tab import _Tab as TiTab

from liandan.formats.embedding import load_embedding
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.jobs import AptJob
from liandan.ui import apt_tab
from liandan.ui.components import UIContext
from liandan.ui.spec_form import SpecForm
from liandan.ui.tabs import tab_list

PREFIX = apt_tab.PREFIX


def _Tab(ctx: UIContext) -> TiTab:
    return TiTab(ctx, apt_tab.build, PREFIX)


def test_every_setting_has_a_control_and_the_placeholder_is_gone(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    tab = _Tab(UIContext(host=host, runner=JobRunner(host)))
    ids = {i for i in tab.by_id if i}
    form = SpecForm(AptJob, PREFIX)
    missing = [p for p in form.leaf_paths() if p not in ("name", "model") and form.elem_id(p) not in ids]
    assert not missing, f"settings with no control in the APT tab: {missing}"
    assert [t.module for t in tab_list() if t.key == "apt"] == ["liandan.ui.apt_tab"]


def test_form_values_become_a_job_and_a_bad_range_is_refused(tmp_path: Path) -> None:
    values = {
        "name": "cat",
        "neg_vectors": 4.0,
        "cfg_scale": "3-5:cos",
        "discriminator": "",
        "neg_lr_scale": 0.5,
    }
    job = apt_tab.job_from_form(values)
    assert (job.neg_name, job.neg_vectors, job.cfg_scale, job.discriminator) == (
        "cat-neg",
        4,
        "3-5:cos",
        None,
    )
    assert job.neg_lr_scale == 0.5 and job.vectors == 3
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    assert "goes down" in tab.call("train", train_name="cat", data_folder=str(tmp_path), cfg_scale="5-3")
    assert runner.status(kind="apt") is None
    runner.close(timeout=5)


@pytest.mark.slow
def test_create_then_train_through_the_tab(train64: Path, tmp_path: Path) -> None:
    data = train64
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    for panel_part in ("status", "interrupt", "resume", "loss", "previews"):
        assert f"{PREFIX}_{panel_part}" in tab.by_id

    created, name_update = tab.call("create", name="tabapt", init_text="a photo", vectors=2, neg_vectors=4)
    assert "Created" in created and name_update["value"] == "tabapt" and name_update["choices"] == ["tabapt"]
    assert load_embedding(host.folders.embeddings / "tabapt-neg.pt").single.shape == (4, 32)
    again, _ = tab.call("create", name="tabapt")
    assert "already exists" in again

    message = tab.call("train", train_name="tabapt", data_folder=str(data), data_width=64, data_height=64,
                       train_max_steps=2, train_save_every=0, train_preview_every=1, preview_steps=2,
                       preview_width=64, preview_height=64, preview_seed=1, cfg_scale="3-5")  # fmt: skip
    assert "Started" in message
    status = runner.wait(runner.status(kind="apt").id, timeout=120)
    assert status.state == "done", status.error
    for name in ("tabapt", "tabapt-neg"):
        assert load_embedding(host.folders.embeddings / f"{name}.pt").step == 2
    assert status.previews and all(Path(p).is_file() for p in status.previews)
    runner.close(timeout=5)
