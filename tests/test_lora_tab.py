"""The LoRA tab: a control for every setting of LoraJob (the network's too), bad values refused before a job
starts, and Train runs a job that ends with the LoRA in the Lora folder; its tools work from the tab."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_textual_inversion_tab import _Tab as TiTab

from liandan.formats.lora import read_lora
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.jobs import LoraJob, NetworkSpec
from liandan.ui import lora_tab
from liandan.ui.components import UIContext
from liandan.ui.concepts import parse_concepts
from liandan.ui.spec_form import SpecForm
from liandan.ui.tabs import tab_list

PREFIX = lora_tab.PREFIX


def _Tab(ctx: UIContext) -> TiTab:
    return TiTab(ctx, lora_tab.build, PREFIX)


def test_every_setting_has_a_control(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    tab = _Tab(UIContext(host=host, runner=JobRunner(host)))
    ids = {i for i in tab.by_id if i}
    form = SpecForm(LoraJob, PREFIX)
    missing = [p for p in form.leaf_paths() if p != "model" and form.elem_id(p) not in ids]
    assert not missing, f"settings with no control in the LoRA tab: {missing}"
    assert f"{PREFIX}_create" not in ids  # nothing to create before training
    assert [t.module for t in tab_list() if t.key == "lora"] == ["liandan.ui.lora_tab"]


def test_form_values_become_a_job_and_bad_values_are_refused(tmp_path: Path) -> None:
    values = {"name": "cat", "data.folder": "/pics", "network.type": "loha", "network.rank": 16.0,
              "network.block_ranks": "middle_block=4", "text_encoder_lr_scale": 0.5}  # fmt: skip
    job = lora_tab.job_from_form(values)
    assert (job.network.type, job.network.rank, job.network.block_ranks) == ("loha", 16, "middle_block=4")
    assert job.text_encoder_lr_scale == 0.5 and job.network.alpha == 4.0
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    message = tab.call("train", name="cat", data_folder=str(tmp_path), network_block_ranks="middle:4")
    assert "NAME=RANK" in message
    assert runner.status(kind="lora") is None
    runner.close(timeout=5)


@pytest.mark.slow
def test_train_through_the_tab(fixtures_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train64"
    shutil.copytree(fixtures_dir / "train64", data)
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    message = tab.call("train", name="tablora", data_folder=str(data), data_width=64, data_height=64,
                       network_type="locon", train_max_steps=2, train_save_every=0, train_preview_every=1,
                       preview_steps=2, preview_width=64, preview_height=64, preview_seed=1)  # fmt: skip
    assert "Started" in message
    status = runner.wait(runner.status(kind="lora").id, timeout=120)
    assert status.state == "done", status.error
    assert read_lora(host.folders.lora / "tablora.safetensors").metadata["ss_steps"] == "2"
    assert status.previews and all(Path(p).is_file() for p in status.previews)
    runner.close(timeout=5)


def test_the_concepts_table_is_the_dreambooth_tabs_and_its_rows_become_the_jobs_concepts(tmp_path) -> None:
    row = [
        "/pics/me",
        "a photo of sks person",
        "/pics/people",
        "a photo of a person",
        50,
        "",
        7.0,
        20,
        1,
        1.0,
    ]
    job = lora_tab.job_from_form(parse_concepts({"name": "me", "concepts": [row], "prior_loss_weight": 0.5}))
    assert [(c.instance_prompt, c.num_class_images) for c in job.concepts] == [("a photo of sks person", 50)]
    assert job.prior_loss_weight == 0.5
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    for part in ("concepts", "concepts_file", "import", "export"):
        assert f"{lora_tab.PREFIX}_{part}" in tab.by_id
    bad = tab.call("train", name="me", concepts=[["/pics/me", "a photo", "", "", "many"]])
    assert "concept row 1: num_class_images = &#x27;many&#x27; is not a number" in bad
    runner.close(timeout=5)


def test_the_tools_run_from_the_tab(tmp_path: Path) -> None:
    from test_lora import _randomised

    from liandan.formats.lora import LoraFile, model_metadata, write_lora
    from liandan.models.lora_injection import LoraNetwork
    from liandan.models.tiny import tiny_bundle

    host = StandaloneHost(tmp_path / "data")
    host.current_checkpoint()  # the tiny default model
    network = _randomised(LoraNetwork(tiny_bundle("sd1"), NetworkSpec(), text_encoders=False))
    metadata = model_metadata("sd1", "epsilon", "mine", 64, 64)
    write_lora(host.folders.lora / "mine.safetensors", LoraFile(network.file_state(), metadata), "fp32")
    runner = JobRunner(host)
    tab = _Tab(UIContext(host=host, runner=runner))
    assert "&quot;type&quot;: &quot;lora&quot;" in tab.call("tool_info", tool_lora="mine")
    assert "wrote" in tab.call("tool_resize", tool_lora="mine", tool_rank=2)
    assert (host.folders.lora / "mine-r2.safetensors").is_file()
    merged = tab.call("tool_merge", tool_lora="mine", tool_weight=0.5)
    assert "wrote" in merged and (host.folders.checkpoints / "mine-merged.safetensors").is_file()
    assert "liandan-error" in tab.call("tool_info", tool_lora="missing")
    runner.close(timeout=5)
