"""The Aesthetic tab: a control for every setting of AestheticJob and of the Generate panel's GenerateSpec,
Create runs a job that writes the embedding, Generate renders with and without it."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image
from test_textual_inversion_tab import _Tab

from liandan.formats.aesthetic import load_aesthetic
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.jobs import AestheticJob, AestheticSettings, GenerateSpec
from liandan.ui import aesthetic_tab
from liandan.ui.components import UIContext
from liandan.ui.spec_form import SpecForm
from liandan.ui.tabs import tab_list

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_every_setting_has_a_control_and_the_tab_is_listed(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    ids = {i for i in _Tab(UIContext(host=host, runner=JobRunner(host)), aesthetic_tab.build).by_id if i}
    for spec, prefix in ((AestheticJob, aesthetic_tab.PREFIX), (GenerateSpec, aesthetic_tab.GENERATE_PREFIX)):
        form = SpecForm(spec, prefix)
        missing = [p for p in form.leaf_paths() if p != "model" and form.elem_id(p) not in ids]
        assert not missing, f"settings of {spec.__name__} with no control in the Aesthetic tab: {missing}"
    assert f"{aesthetic_tab.PREFIX}_model" in ids and f"{aesthetic_tab.GENERATE_PREFIX}_model" in ids
    assert [t.module for t in tab_list() if t.key == "aesthetic"] == ["liandan.ui.aesthetic_tab"]


def test_the_webui_section_has_no_generate_panel(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    tab = _Tab(UIContext(host=host, runner=JobRunner(host), in_webui=True), aesthetic_tab.build)
    assert f"{aesthetic_tab.PREFIX}_create" in tab.by_id
    assert f"{aesthetic_tab.GENERATE_PREFIX}_generate" not in tab.by_id


def test_create_then_generate_through_the_tab(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner), aesthetic_tab.build, aesthetic_tab.PREFIX)
    assert "needs a name" in tab.call("create", folder=str(IMAGES))
    assert "Started" in tab.call("create", name="look", folder=str(IMAGES), batch_size=2)
    status = runner.wait(runner.status(kind="aesthetic").id, timeout=120)
    assert status.state == "done" and status.step == status.total == 4, status.error
    assert load_aesthetic(host.folders.aesthetic_embeddings / "look.pt").features[""].shape == (1, 32)

    gen = _Tab(UIContext(host=host, runner=runner), aesthetic_tab.build, aesthetic_tab.GENERATE_PREFIX)
    fn, inputs = gen.handler("generate")
    values = {"prompt": "a cat", "width": 64, "height": 64, "steps": 3, "seed": 5}

    def click(**changes):
        args = []
        for block in inputs:
            key = block.elem_id.removeprefix(f"{aesthetic_tab.GENERATE_PREFIX}_")
            args.append({**values, **changes}.get(key, block.value))
        return fn(*args)

    def render(**changes):
        path, info = click(**changes)
        assert path, info
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16), info

    plain, plain_info = render()
    steered, info = render(aesthetic="look", aesthetic_settings_learn_rate=0.005)
    assert "Aesthetic embedding: look" in info and "Aesthetic" not in plain_info
    assert np.abs(steered - plain).max() > 0
    assert np.array_equal(render(aesthetic="look", aesthetic_settings_weight=0)[0], plain)
    runner.close(timeout=5)
    path, error = click(aesthetic="look", aesthetic_settings_learn_rate=1.0)
    assert path is None and "learn_rate = 1.0 is out of range" in error


def test_the_script_section_reads_its_values_back_from_an_infotext(tmp_path: Path) -> None:
    with gr.Blocks():
        controls, infotext = aesthetic_tab.script_section(tmp_path, is_img2img=True)
    assert controls[0].elem_id == "liandan_aesthetic_img2img_embedding"
    by_label = {label: control for control, label in infotext if isinstance(label, str)}
    defaults = AestheticSettings()
    assert by_label["Aesthetic slerp angle"].value == defaults.slerp_angle
    assert by_label["Aesthetic text negative"].value is defaults.text_is_negative
