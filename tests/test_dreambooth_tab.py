"""The DreamBooth tab: a control for every setting of DreamBoothJob, the concepts table to a job and to and
from a concepts_list file, Export job file, Convert, and a training run started from the tab."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_textual_inversion_tab import _Tab as TiTab

from liandan.errors import ConfigError
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.jobs import DreamBoothJob, load_job_file
from liandan.ui import dreambooth_tab
from liandan.ui.components import UIContext
from liandan.ui.concepts import concept_rows
from liandan.ui.spec_form import SpecForm
from liandan.ui.tabs import tab_list

PREFIX = dreambooth_tab.PREFIX
EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
ROW = ["/me", "sks dog", "/dogs", "a dog", "10", "", 5, 30.0, 2, 0.5]


def _tab(tmp_path: Path) -> tuple[TiTab, JobRunner, StandaloneHost]:
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    return TiTab(UIContext(host=host, runner=runner), dreambooth_tab.build, PREFIX), runner, host


def test_every_setting_has_a_control_and_the_placeholder_is_gone(tmp_path: Path) -> None:
    tab, runner, _ = _tab(tmp_path)
    ids = {i for i in tab.by_id if i}
    form = SpecForm(DreamBoothJob, PREFIX)
    missing = [p for p in form.leaf_paths() if p != "model" and form.elem_id(p) not in ids]
    assert not missing, f"settings with no control in the DreamBooth tab: {missing}"
    for part in ("model", "status", "interrupt", "resume", "loss", "previews", "export_job", "convert"):
        assert f"{PREFIX}_{part}" in ids
    assert [t.module for t in tab_list() if t.key == "dreambooth"] == ["liandan.ui.dreambooth_tab"]
    runner.close(timeout=5)


def test_table_rows_become_concepts_and_a_bad_number_names_its_cell() -> None:
    untouched = ["", "", "", "", 0, "", 7.0, 20, 1, 1.0]  # the table's first row as it starts
    job = dreambooth_tab.job_from_form(
        {"name": "dog", "concepts": [ROW, untouched], "prior_loss_weight": 0.5}
    )
    (concept,) = job.concepts  # a row without folders or prompts is skipped
    assert (concept.instance_folder, concept.class_folder) == (Path("/me"), Path("/dogs"))
    assert (concept.num_class_images, concept.class_cfg_scale, concept.class_steps) == (10, 5.0, 30)
    assert (concept.repeats, concept.loss_weight, job.prior_loss_weight) == (2, 0.5, 0.5)
    assert concept_rows(job.concepts) == [["/me", "sks dog", "/dogs", "a dog", 10, "", 5.0, 30, 2, 0.5]]
    plain = dreambooth_tab.job_from_form({"name": "ft", "concepts": [untouched], "data.folder": "/pictures"})
    assert plain.concepts == () and plain.data.folder == Path("/pictures")
    with pytest.raises(ConfigError, match=r"concept row 1: num_class_images = 'ten' is not a number"):
        dreambooth_tab.job_from_form({"name": "dog", "concepts": [["/me", "x", "", "", "ten"]]})


def test_concepts_export_and_import_through_the_buttons(tmp_path: Path) -> None:
    tab, runner, _ = _tab(tmp_path)
    path = tmp_path / "concepts.json"
    assert "Wrote 1 concept(s)" in tab.call("export", concepts_file=str(path), concepts=[ROW])
    assert json.loads(path.read_text())[0]["class_guidance_scale"] == 5.0
    update, message = tab.call("import", concepts_file=str(path))
    assert "Imported 1 concept(s)" in message
    assert update["value"] == [["/me", "sks dog", "/dogs", "a dog", 10, "", 5.0, 30, 2, 0.5]]
    _, bad = tab.call("import", concepts_file=str(tmp_path / "missing.json"))
    assert "cannot read concepts list" in bad
    runner.close(timeout=5)


def test_convert_writes_a_diffusers_folder(tmp_path: Path) -> None:
    tab, runner, host = _tab(tmp_path)
    source = host.current_checkpoint().path
    message = tab.call("convert", convert_source=str(source), convert_target=str(tmp_path / "folder"))
    assert "Wrote" in message and (tmp_path / "folder" / "model_index.json").is_file()
    assert "already exists" in tab.call(
        "convert", convert_source=str(source), convert_target=str(tmp_path / "folder")
    )
    runner.close(timeout=5)


@pytest.mark.slow
def test_train_and_export_through_the_tab(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_IMAGES, tmp_path / "me")
    tab, runner, host = _tab(tmp_path)
    row = [str(tmp_path / "me"), "sks shape", str(tmp_path / "shapes"), "a shape", 1, "", 7.0, 1, 1, 1.0]
    values = {"name": "tabdb", "concepts": [row], "data_width": 64, "data_height": 64, "train_max_steps": 2,
              "train_save_every": 0, "train_preview_every": 1, "preview_steps": 1, "preview_width": 64,
              "preview_height": 64, "preview_seed": 1, "save_dtype": "fp32"}  # fmt: skip
    exported = tab.call("export_job", **values)
    (path,) = host.folders.logs.glob("jobs/tabdb.json")
    assert str(path) in exported
    job = load_job_file(path)
    assert isinstance(job, DreamBoothJob) and job.concepts[0].num_class_images == 1
    assert "Started" in tab.call("train", **values)
    status = runner.wait(runner.status(kind="dreambooth").id, timeout=300)
    assert status.state == "done", status.error
    assert (host.folders.checkpoints / "tabdb.safetensors").is_file()
    assert "tabdb.safetensors" in {ref.title for ref in host.list_checkpoints()}
    assert status.previews and all(Path(p).is_file() for p in status.previews)
    runner.close(timeout=5)
