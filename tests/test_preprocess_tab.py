from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from liandan.errors import ConfigError
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.ui.components import UIContext
from liandan.ui.preprocess_tab import CAPTIONER_LABELS, build, job_from_form


def test_form_values_become_a_job() -> None:
    job = job_from_form({"source": "in", "destination": "out", "width": 64.0, "captioners": ["WD14", "BLIP"],
                         "deepdanbooru_project": "", "batch_size": 2.0})  # fmt: skip
    assert job.width == 64 and job.batch_size == 2 and job.captioners == ("wd14", "blip")
    assert job.deepdanbooru_project is None
    with pytest.raises(ConfigError):
        job_from_form({"overlap_ratio": 3.0})
    assert set(CAPTIONER_LABELS) == {"deepbooru", "blip", "wd14", "deepdanbooru"}


def test_tab_builds_and_its_start_button_runs_a_job(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (40, 30), "red").save(src / "a.png")
    host = StandaloneHost(tmp_path / "data")
    runner = JobRunner(host)
    ctx = UIContext(host=host, runner=runner)
    with gr.Blocks() as demo:
        build(ctx)
    start = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "liandan_preprocess_start")
    dependency = next(d for d in demo.dependencies if start._id in d["targets"])
    fn = demo.fns[demo.dependencies.index(dependency)].fn
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    inputs = [demo.blocks[i] for i in dependency["inputs"]]
    values = [b.value for b in inputs]
    names = [b.elem_id.removeprefix("liandan_preprocess_") for b in inputs]
    values[names.index("source")] = str(src)
    values[names.index("destination")] = str(tmp_path / "out")
    values[names.index("width")] = values[names.index("height")] = 32
    assert "Started" in fn(*values)
    status = runner.wait(runner.status(kind="preprocess").id, timeout=60)
    assert status.state == "done", status.error
    assert (tmp_path / "out" / "a.png").is_file() and "1 processed" in status.messages[-1]
    assert "liandan_preprocess_status" in by_id and "liandan_preprocess_interrupt" in by_id
    # a preprocess job trains nothing: no loss plot, no previews, nothing to resume
    assert not {f"liandan_preprocess_{part}" for part in ("loss", "previews", "resume")} & set(by_id)
    values[names.index("destination")] = str(src)
    assert "never written" in fn(*values)
    values[names.index("in_place_captions")] = True
    assert "only write .txt" in fn(*values)  # refused in the form, before any job starts
    runner.close(timeout=5)
