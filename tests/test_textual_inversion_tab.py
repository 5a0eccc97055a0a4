from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from liandan.errors import ConfigError
from liandan.formats.embedding import load_embedding
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.jobs import TextualInversionJob
from liandan.ui.components import UIContext
from liandan.ui.spec_form import SpecForm
from liandan.ui.textual_inversion_tab import PREFIX, build, job_from_form


def test_every_setting_of_the_job_has_a_control_and_save_as_is_one(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    tab = _Tab(UIContext(host=host, runner=JobRunner(host)))
    ids = {i for i in tab.by_id if i}
    form = SpecForm(TextualInversionJob, PREFIX)
    missing = [p for p in form.leaf_paths() if p not in ("name", "model") and form.elem_id(p) not in ids]
    assert not missing, f"settings with no control in the TI tab: {missing}"
    assert {f"{PREFIX}_model", f"{PREFIX}_train_name", f"{PREFIX}_refresh"} <= ids
    labels = [b.label for b in tab.demo.blocks.values() if getattr(b, "label", None)]
    assert sum("Save as" in label for label in labels) == 1
    assert isinstance(tab.by_id[f"{PREFIX}_train_name"], gr.Dropdown)


def test_form_values_become_a_job() -> None:
    job = job_from_form({"name": "cat", "vectors": 4.0, "train.max_steps": 20.0, "data.folder": "imgs",
                         "data.flip": 0.5, "log_dir": "", "preview.cfg_scale": 5})  # fmt: skip
    assert job.name == "cat" and job.vectors == 4 and job.train.max_steps == 20
    assert job.data.folder == Path("imgs") and job.data.flip == 0.5 and job.log_dir is None
    assert job.preview.cfg_scale == 5.0
    assert job.train.learn_rate == "0.005"  # the TI default survives a partial section
    with pytest.raises(ConfigError):
        job_from_form({"vectors": 76})


class _Tab:
    """The built tab's click handlers, called as Gradio would call them."""

    def __init__(self, ctx: UIContext, build_tab=build, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        with gr.Blocks() as self.demo:
            build_tab(ctx)
        self.by_id = {getattr(b, "elem_id", None): b for b in self.demo.blocks.values()}

    def handler(self, button: str):
        target = self.by_id[f"{self.prefix}_{button}"]
        index, dependency = next(
            (i, d) for i, d in enumerate(self.demo.dependencies) if target._id in d["targets"]
        )
        inputs = [self.demo.blocks[i] for i in dependency["inputs"]]
        return self.demo.fns[index].fn, inputs

    def call(self, button: str, **values):
        fn, inputs = self.handler(button)
        args = []
        for block in inputs:
            key = block.elem_id.removeprefix(f"{self.prefix}_")
            args.append(values.get(key, block.value))
        return fn(*args)


@pytest.mark.slow
def test_create_then_train_through_the_tab(train64: Path, tmp_path: Path) -> None:
    data = train64
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    for panel_part in ("status", "interrupt", "resume", "loss", "previews"):
        assert f"{PREFIX}_{panel_part}" in tab.by_id

    created, name_update = tab.call("create", name="tabti", init_text="a photo", vectors=2)
    assert "Created" in created and name_update["value"] == "tabti" and "tabti" in name_update["choices"]
    assert load_embedding(host.folders.embeddings / "tabti.pt").single.shape == (2, 32)
    again, _ = tab.call("create", name="tabti")
    assert "already exists" in again

    message = tab.call("train", train_name="tabti", data_folder=str(data), data_width=64, data_height=64,
                       train_max_steps=2, train_save_every=0, train_preview_every=1, preview_steps=2,
                       preview_width=64, preview_height=64, preview_seed=1)  # fmt: skip
    assert "Started" in message
    status = runner.wait(runner.status(kind="textual_inversion").id, timeout=120)
    assert status.state == "done", status.error
    assert load_embedding(host.folders.embeddings / "tabti.pt").step == 2
    assert status.previews and all(Path(p).is_file() for p in status.previews)
    assert "loss" in status.messages[-1]
    runner.close(timeout=5)


def test_a_malformed_form_is_refused_before_queueing(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    assert "liandan-error" in tab.call("train", train_name="x", train_max_steps=0)
    assert "schedule" in tab.call(
        "train", train_name="x", data_folder=str(tmp_path), train_learn_rate="0.1:abc"
    )
    assert "needs a name" in tab.call("train", train_name="", data_folder=str(tmp_path))
    assert "not allowed" in tab.call("train", train_name="../x", data_folder=str(tmp_path))
    assert runner.status(kind="textual_inversion") is None
    bad, _ = tab.call("create", name="../x")
    assert "not allowed" in bad
    runner.close(timeout=5)
