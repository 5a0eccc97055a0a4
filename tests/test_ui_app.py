from __future__ import annotations

import html
import importlib.machinery
import json
import sys
import threading
import types
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from liandan import job_runner, registry
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import JobRunner
from liandan.jobs import JobSpec
from liandan.progress import ProgressEvent
from liandan.ui import components, tabs
from liandan.ui.app import build_app, serve


@dataclass(frozen=True)
class UiJob(JobSpec):
    kind: ClassVar[str] = "ui_test_job"
    steps: int = 3


@pytest.fixture
def host(tmp_path: Path) -> StandaloneHost:
    return StandaloneHost(tmp_path / "data")


@pytest.fixture
def runner(host: StandaloneHost):
    runner = JobRunner(host)
    yield runner
    runner.close(timeout=5)


def _config(app) -> dict:
    return app.get_config_file()


def _by_elem_id(app) -> dict[str, dict]:
    return {c["props"].get("elem_id"): c for c in _config(app)["components"] if c["props"].get("elem_id")}


def test_app_has_every_tab_in_order_with_elem_ids(host, runner) -> None:
    app = build_app(host, runner)
    labels = [c["props"]["label"] for c in _config(app)["components"] if c["type"] == "tabitem"]
    assert labels == [m.title for m in registry.METHODS.values() if m.tab is not None]
    ids = _by_elem_id(app)
    for tab in tabs.tab_list():
        assert f"liandan_tab_{tab.key}" in ids


def test_missing_package_shows_its_name_and_a_broken_tab_an_error(
    host, runner, monkeypatch, tmp_path
) -> None:
    (tmp_path / "needs_package_tab.py").write_text("import liandan_test_absent_package\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = types.ModuleType("broken_tab")
    broken.__spec__ = importlib.machinery.ModuleSpec("broken_tab", None)

    def build(ctx) -> None:
        raise RuntimeError("boom")

    broken.build = build
    monkeypatch.setitem(sys.modules, "broken_tab", broken)
    listed = [
        tabs.TabDef("needs", "Needs", "needs_package_tab"),
        tabs.TabDef("gone", "Gone", "liandan.ui.no_such_tab"),
        tabs.TabDef("broken", "Broken", "broken_tab"),
        tabs.TabDef("apt", "APT", "liandan.ui.apt_tab"),
    ]
    monkeypatch.setattr(tabs, "tab_list", lambda: listed)
    ids = _by_elem_id(build_app(host, runner))
    unavailable = ids["liandan_needs_unavailable"]["props"]["value"]
    assert html.escape("needs the Python package 'liandan_test_absent_package'") in unavailable
    # a module of ours that is missing is a bug, shown as one (not as "not installed")
    assert "ModuleNotFoundError" in ids["liandan_gone_failed"]["props"]["value"]
    assert "failed to load: RuntimeError: boom" in ids["liandan_broken_failed"]["props"]["value"]
    assert "liandan_apt_train" in ids  # the tabs after the broken one were built


def test_job_panel_polls_the_runner_and_its_buttons_interrupt_and_resume(host, runner, monkeypatch) -> None:
    preview = host.folders.logs / "p.png"
    preview.write_bytes(b"png")
    started, release = threading.Event(), threading.Event()

    def run(spec, host_, reporter, control) -> None:
        for step in range(1, spec.steps + 1):
            reporter(ProgressEvent("step", step=step, total=spec.steps, loss=1.0 / step))
        reporter(ProgressEvent("preview", step=spec.steps, paths=(preview, host.folders.logs / "gone.png")))
        started.set()
        release.wait(5)
        if not control.interrupted:
            reporter(ProgressEvent("done", step=spec.steps, total=spec.steps))

    registry.register(registry.Method(UiJob, run, "UI test"))
    monkeypatch.setattr(tabs, "tab_list", lambda: [tabs.TabDef("job", "Job", "panel_tab")])
    module = types.ModuleType("panel_tab")
    module.__spec__ = importlib.machinery.ModuleSpec("panel_tab", None)
    module.build = lambda ctx: components.job_panel(ctx, UiJob.kind, "test")
    monkeypatch.setitem(sys.modules, "panel_tab", module)
    try:
        app = build_app(host, runner)
        # no repeating Gradio event (it keeps the server from closing: A1111's Reload UI hung): the page's
        # timer clicks a hidden button, whose request goes outside the queue
        assert all(d.get("every") is None for d in app.dependencies)
        load = next(d for d in app.dependencies if d["trigger"] == "load")
        assert "setInterval" in load["js"] and "#liandan_poll" in load["js"]
        ids = _by_elem_id(app)
        poll_index = next(
            i for i, d in enumerate(app.dependencies) if ids["liandan_poll"]["id"] in d["targets"]
        )
        assert app.dependencies[poll_index]["queue"] is False
        poll_fn = app.fns[poll_index].fn
        assert "No job yet" in poll_fn()[0]

        job = runner.submit(UiJob(steps=3))
        assert started.wait(5)
        html, curve, gallery = poll_fn()
        assert "running" in html and "step 3/3" in html and "loss 0.33333" in html
        assert "<svg" in curve and "loss 0.33333 at step 3" in curve
        assert gallery == [str(preview)]  # a preview file that vanished is left out

        click = {
            ids[name]["id"]: app.fns[i].fn
            for i, d in enumerate(app.dependencies)
            for name in ids
            if d["trigger"] == "click" and ids[name]["id"] in d["targets"]
        }
        _, early_notice = click[ids["test_resume"]["id"]]()
        assert "still running" in early_notice  # not a silent nothing while the job is saving
        status_html, notice = click[ids["test_interrupt"]["id"]]()
        assert "running" in status_html and f"Interrupting {job}" in notice
        release.set()
        assert runner.wait(job, timeout=5).state == "interrupted"
        assert "nothing to interrupt" in click[ids["test_interrupt"]["id"]]()[1]
        _, resumed = click[ids["test_resume"]["id"]]()
        assert runner.status(kind=UiJob.kind).id != job and "Resumed as" in resumed
    finally:
        release.set()
        registry.unregister(UiJob.kind)


def test_render_status_escapes_and_shows_errors() -> None:
    status = job_runner.JobStatus(id="x", kind="k", state="error", step=1, total=4, error="<bad> path")
    html = components.render_status(status)
    assert "&lt;bad&gt; path" in html and "<bad>" not in html
    assert 'style="width:25.0%"' in html


def test_loss_plot_is_thinned_but_keeps_the_last_point() -> None:
    losses = tuple((i, float(i)) for i in range(1, 5001))
    status = job_runner.JobStatus(id="x", kind="k", state="running", losses=losses)
    points = components.loss_points(status)
    assert len(points) <= components.MAX_PLOT_POINTS + 1
    assert points[-1] == (5000, 5000.0) and points[0] == (1, 1.0)


def test_loss_curve_is_svg_with_the_last_loss_and_a_gap_for_nan() -> None:
    losses = ((1, 2.0), (2, float("nan")), (3, 1.0))
    svg = components.render_loss_curve(job_runner.JobStatus(id="x", kind="k", state="running", losses=losses))
    assert "<svg" in svg and "loss 1.00000 at step 3" in svg
    points = svg.split('points="')[1].split('"')[0].split()
    assert len(points) == 2  # the NaN step is left out, not drawn at the bottom
    (x1, y1), (x2, y2) = (tuple(map(float, p.split(","))) for p in points)
    assert x1 < x2 and y1 < y2  # higher loss is higher up (smaller y)
    assert "no steps yet" in components.render_loss_curve(None)


def test_template_choices_list_user_templates_first(host, runner) -> None:
    (host.folders.templates / "mine.txt").write_text("a photo of [name]\n")
    choices = components.UIContext(host=host, runner=runner).template_choices()
    assert choices[0] == "mine.txt"


def test_model_dropdown_follows_the_host_and_maps_to_a_job_model(host, runner) -> None:
    import gradio as gr

    (host.folders.checkpoints / "mine.safetensors").write_bytes(b"")
    webui_ctx = components.UIContext(host=host, runner=runner, in_webui=True)
    with gr.Blocks():
        standalone = components.model_dropdown(components.UIContext(host=host, runner=runner), "p")
        in_webui = components.model_dropdown(webui_ctx, "q")
    assert [c[0] if isinstance(c, tuple) else c for c in standalone.choices] == [
        components.CURRENT_MODEL,
        "mine.safetensors",
    ]
    assert len(in_webui.choices) == 1  # inside A1111 the top-left dropdown chooses the model
    assert standalone.elem_id == "p_model" and standalone.value == components.CURRENT_MODEL
    assert components.job_model(components.CURRENT_MODEL) == components.job_model(None) == ""
    assert components.job_model("mine.safetensors") == "mine.safetensors"


def test_serve_answers_on_localhost(host, runner) -> None:
    app = build_app(host, runner)
    serve(app, runner, port=_free_port(), block=False)
    try:
        with urllib.request.urlopen(f"{app.local_url}config", timeout=10) as response:
            config = json.load(response)
        assert app.local_url.startswith("http://127.0.0.1:")
        assert any(c["props"].get("elem_id") == "liandan_tabs" for c in config["components"])
    finally:
        app.close()


def test_the_rest_routes_answer_from_the_servers_first_moment(host, runner, monkeypatch) -> None:
    """A client that waits for the UI to answer (as scripts and our tests do) finds the REST routes there too:
    here it asks the moment the server is up, before `launch` has returned."""
    from gradio import networking

    start_server = networking.start_server
    kinds_at_start: list[object] = []

    def start_and_ask(*args, **kwargs):
        started = start_server(*args, **kwargs)
        local_url = started[2]
        with urllib.request.urlopen(f"{local_url}liandan/v1/kinds", timeout=10) as response:
            kinds_at_start.append(json.load(response)["kinds"])
        return started

    monkeypatch.setattr(networking, "start_server", start_and_ask)
    app = build_app(host, runner)
    try:
        serve(app, runner, port=_free_port(), block=False)
    finally:
        app.close()
    assert kinds_at_start == [registry.kinds()]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_saved_checkpoint_marks_the_status_for_the_dropdown_refresh(tmp_path: Path) -> None:
    ckpts = tmp_path / "models" / "Stable-diffusion"
    saved = job_runner.JobStatus(id="db-1", kind="k", state="done", outputs=(ckpts / "mine.safetensors",))
    assert 'class="liandan-refresh-checkpoints" data-key="db-1-1"' in components.render_status(saved, ckpts)
    other = job_runner.JobStatus(id="ti-1", kind="k", state="done", outputs=(tmp_path / "emb.pt",))
    assert "liandan-refresh-checkpoints" not in components.render_status(other, ckpts)
