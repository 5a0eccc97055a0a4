"""The Hypernetwork tab: form values become a job, Create writes the file, Train runs a job, bad input is
shown in the form before anything is queued."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from liandan.errors import ConfigError
from liandan.formats.hypernetwork import load_hypernetwork
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.jobs import HypernetworkJob
from liandan.ui.components import UIContext
from liandan.ui.hypernetwork_tab import PREFIX, build, job_from_form, size_choices
from liandan.ui.spec_form import SpecForm


def test_form_values_become_a_job() -> None:
    job = job_from_form(
        {"name": "hn", "sizes": ["768", "320"], "layer_structure": "1, 2, 2, 1", "train.max_steps": 7.0,
         "train.learn_rate": "5e-6", "data.folder": "pics", "data.flip": 0.5, "preview.seed": -1.0}
    )  # fmt: skip
    assert job.sizes == (768, 320) and job.train.max_steps == 7 and job.data.folder == Path("pics")
    assert (
        job.data.template == "liandan_hypernetwork.txt"
    )  # a partial section keeps the hypernetwork's defaults
    assert job.train.learn_rate == "5e-6" and job.data.flip == 0.5
    with pytest.raises(ConfigError):
        job_from_form({"weight_init": "Uniform"})


class Form:
    """Calls a button's handler the way Gradio would, with values changed by elem_id suffix."""

    def __init__(self, demo: gr.Blocks, button: str) -> None:
        target = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == f"{PREFIX}_{button}")
        dependency = next(d for d in demo.dependencies if target._id in d["targets"])
        self.fn = demo.fns[demo.dependencies.index(dependency)].fn
        self.inputs = [demo.blocks[i] for i in dependency["inputs"]]

    def __call__(self, **changes) -> object:
        values = [b.value for b in self.inputs]
        names = [b.elem_id.removeprefix(f"{PREFIX}_") for b in self.inputs]
        for name, value in changes.items():
            values[names.index(name)] = value
        return self.fn(*values)


@pytest.fixture
def tab(tmp_path: Path, fixtures_dir: Path):
    host = StandaloneHost(tmp_path / "data", checkpoint=fixtures_dir / "model" / "tiny-sd1.safetensors")
    runner = JobRunner(host)
    with gr.Blocks() as demo:
        build(UIContext(host=host, runner=runner))
    yield host, runner, demo
    runner.close(timeout=5)


def test_create_button_writes_the_file_and_offers_it_for_training(tab) -> None:
    host, _runner, demo = tab
    create = Form(demo, "create")
    message, dropdown = create(name="made", layer_structure="1, 2, 2, 1", activation="relu")
    assert "Created hypernetwork" in message
    assert dropdown["value"] == "made" and "made" in dropdown["choices"]
    assert load_hypernetwork(host.folders.hypernetworks / "made.pt").layer_structure == [1, 2, 2, 1]
    message, dropdown = create(name="bad", layer_structure="1, abc, 1")
    assert "liandan-error" in message and "&#x27;abc&#x27; is not a number" in message
    message, _ = create(name="made")
    assert "already exists" in message


def test_train_button_runs_a_job_and_refuses_bad_input(tab, train64: Path, tmp_path) -> None:
    host, runner, demo = tab
    data = train64
    train = Form(demo, "train")
    assert "is out of range" in train(name="x", layer_structure="1, -2, 1", data_folder=str(data))
    refused = train(train_name="x", data_folder=str(data), train_learn_rate="0.1:abc")
    assert "liandan-error" in refused and "schedule" in refused
    assert runner.status(kind="hypernetwork") is None  # nothing was queued for either
    started = train(
        train_name="fromtab", data_folder=str(data), data_width=64, data_height=64, train_max_steps=2,
        train_save_every=0, train_preview_every=0, train_learn_rate="0.0001", preview_steps=2,
        preview_width=64, preview_height=64,
    )  # fmt: skip
    assert "Started" in started
    status = runner.wait(runner.status(kind="hypernetwork").id, timeout=120)
    assert status.state == "done", status.error
    assert load_hypernetwork(host.folders.hypernetworks / "fromtab.pt").step == 2
    assert len(status.losses) == 2


def test_prompt_template_offers_the_template_files_like_the_ti_tab(tab) -> None:
    _host, _runner, demo = tab
    template = next(
        b for b in demo.blocks.values() if getattr(b, "elem_id", None) == f"{PREFIX}_data_template"
    )
    assert isinstance(template, gr.Dropdown) and template.value == "liandan_hypernetwork.txt"
    assert {"liandan_hypernetwork.txt", "liandan_style_filewords.txt"} <= {
        c[0] if isinstance(c, tuple) else c for c in template.choices
    }


def test_every_setting_has_a_control_and_module_sizes_follow_the_model(tab, tmp_path) -> None:
    host, _runner, demo = tab
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    form = SpecForm(HypernetworkJob, PREFIX)
    missing = [p for p in form.leaf_paths() if p != "model" and form.elem_id(p) not in by_id]
    assert not missing, f"settings with no control in the hypernetwork tab: {missing}"
    # the tiny SD1 checkpoint's own attention widths, read from its header, not a fixed SD1 list
    sizes = by_id[f"{PREFIX}_sizes"]
    assert [c[1] if isinstance(c, tuple) else c for c in sizes.choices] == ["32", "64", "128"]
    refresh_sizes = next(
        demo.fns[i].fn
        for i, d in enumerate(demo.dependencies)
        if by_id[f"{PREFIX}_refresh"]._id in d["targets"] and sizes._id in d["outputs"]
    )
    assert refresh_sizes("")["choices"] == ["32", "64", "128"]  # Refresh reads the model's widths again
    pickle = tmp_path / "old.ckpt"  # its shapes cannot be read without loading it: the known widths
    pickle.write_bytes(b"")
    assert "768" in size_choices(UIContext(host=host, runner=None), str(pickle))  # type: ignore[arg-type]
