"""host/webui.py against tests/a1111_stub, a stand-in for A1111 v1.10.1's `modules` that records calls."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from liandan import registry
from liandan.errors import CheckpointError, LiandanError
from liandan.host.base import Host
from liandan.host.webui import WebUIHost, parse_version
from liandan.job_runner import JobRunner
from liandan.jobs import JobSpec
from liandan.progress import ProgressEvent

STUB = Path(__file__).parent / "a1111_stub"
REPO = Path(__file__).resolve().parents[1]


def _drop_stub_modules() -> None:
    for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.")]:
        del sys.modules[name]


@pytest.fixture
def a1111(tmp_path: Path, monkeypatch):
    """`start(**configure_kwargs)` gives the stub's `modules` package configured as a fresh WebUI."""
    monkeypatch.syspath_prepend(str(STUB))
    _drop_stub_modules()
    import modules

    def start(**kwargs):
        modules.configure(tmp_path / "webui", **kwargs)
        return modules

    yield start
    _drop_stub_modules()


@pytest.fixture
def fake_loader(monkeypatch):
    """liandan.models.loading.load_bundle stand-in recording where the WebUI model was when we loaded."""
    loads: list[tuple[Path, str, bool]] = []

    def load_bundle(path: Path):
        from modules import call_queue, sd_models

        model = sd_models.model_data.sd_model
        loads.append((path, model.device if model else "", call_queue.queue_lock.locked()))
        bundle = SimpleNamespace(source=path, short_hash=None, text_encoders=[], unet=None, vae=None)
        bundle.to = lambda device: bundle
        return bundle

    import liandan.models.loading

    monkeypatch.setattr(liandan.models.loading, "load_bundle", load_bundle)
    return loads


def test_package_imports_without_a1111() -> None:
    code = "import liandan.host.webui, liandan.job_runner, sys; assert 'modules' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("v1.10.1", (1, 10)),
        ("v1.10.1-96-g1937682a", (1, 10)),
        ("1.10.1", (1, 10)),
        ("f2.0.1v1.10.1-x", (1, 10)),
    ],
)
def test_parse_version(tag: str, version: tuple[int, int]) -> None:
    assert parse_version(tag) == version
    assert parse_version("<none>") is None


def test_old_webui_fails_fast_with_what_to_do(a1111) -> None:
    a1111(tag="v1.5.2")
    with pytest.raises(
        LiandanError, match=r"needs AUTOMATIC1111 WebUI 1\.7 or later.*'v1\.5\.2'.*liandan ui"
    ):
        WebUIHost()


def test_unknown_version_is_checked_by_its_api(a1111) -> None:
    modules = a1111(tag="<none>")
    assert WebUIHost().version == "<none>"
    del modules.sd_models.send_model_to_device
    with pytest.raises(
        LiandanError, match=r"lacks what liandan uses: modules\.sd_models\.send_model_to_device"
    ):
        WebUIHost()


def test_folders_come_from_the_webui_options(a1111, tmp_path: Path) -> None:
    root = tmp_path / "webui"
    a1111(flags=("--embeddings-dir", str(tmp_path / "my-emb"), "--ckpt-dir", str(tmp_path / "ckpts")))
    host = WebUIHost()
    assert isinstance(host, Host)
    f = host.folders
    assert f.embeddings == tmp_path / "my-emb"
    assert f.checkpoints == tmp_path / "ckpts"
    assert f.hypernetworks == root / "models" / "hypernetworks"
    assert f.lora == root / "models" / "Lora"
    assert f.aesthetic_embeddings == root / "models" / "aesthetic_embeddings"
    assert f.models == root / "models"
    assert f.logs == root / "textual_inversion"
    assert f.templates == root / "textual_inversion_templates"


def test_folders_without_ckpt_dir_lora_extension_and_with_a_log_dir_setting(a1111, tmp_path: Path) -> None:
    modules = a1111(lora_extension=False)
    modules.shared.opts.liandan_log_dir = "train-logs"
    f = WebUIHost().folders
    assert f.checkpoints == tmp_path / "webui" / "models" / "Stable-diffusion"
    assert f.lora == tmp_path / "webui" / "models" / "Lora"
    assert f.logs == tmp_path / "webui" / "train-logs"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_current_checkpoint_and_family(a1111, family: str) -> None:
    a1111(model=family)
    ref = WebUIHost().current_checkpoint()
    assert ref.title == "tiny-sd1.safetensors [0123456789]"
    assert (ref.short_hash, ref.family) == ("0123456789", family)


def test_current_checkpoint_without_a_loaded_model_is_the_selected_one(a1111) -> None:
    a1111(model=None)
    ref = WebUIHost().current_checkpoint()
    assert ref.path.name == "tiny-sd1.safetensors" and ref.family is None


def test_resolve_checkpoint(a1111, tmp_path: Path) -> None:
    a1111()
    host = WebUIHost()
    assert host.resolve_checkpoint("other").path.name == "other.safetensors"
    own = tmp_path / "own.safetensors"
    own.write_bytes(b"x")
    assert host.resolve_checkpoint(str(own)).path == own
    with pytest.raises(CheckpointError, match="'nope' is neither a file nor a checkpoint the WebUI lists"):
        host.resolve_checkpoint("nope")


FLAG_SETS = [
    (),
    ("--medvram",),
    ("--lowvram",),
    ("--xformers",),
    ("--opt-sdp-attention",),
    ("--medvram", "--xformers"),
]


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_webui_model_is_freed_while_training_and_restored_after_an_error(a1111, fake_loader, flags) -> None:
    modules = a1111(flags=flags)
    webui_model = modules.sd_models.model_data.sd_model
    lowvram = "--lowvram" in flags or "--medvram" in flags
    host = WebUIHost()
    with pytest.raises(RuntimeError, match="training blew up"), host.model_for_training() as bundle:
        assert webui_model.device == "cpu"
        assert bundle.short_hash == "0123456789"  # filled from A1111's hash when the loader has none
        raise RuntimeError("training blew up")
    # loaded from the checkpoint file while the WebUI model sat on the CPU, under the generation lock
    assert fake_loader == [(Path(webui_model.sd_checkpoint_info.filename), "cpu", True)]
    assert webui_model.device == "cuda"
    assert not modules.call_queue.queue_lock.locked()
    moves = [c for c in modules.CALLS if c[0] in ("unload_model_weights", "send_model_to_device")]
    expected = ("lowvram.send_everything_to_cpu", "lowvram.apply") if lowvram else ("to(cpu)", "to(device)")
    assert moves == [("unload_model_weights", expected[0]), ("send_model_to_device", expected[1])]


def test_training_without_a_loaded_webui_model_restores_nothing(a1111, fake_loader) -> None:
    modules = a1111(model=None)
    with WebUIHost().model_for_training():
        pass
    assert not [c for c in modules.CALLS if c[0] in ("unload_model_weights", "send_model_to_device")]
    assert fake_loader[0][0].name == "tiny-sd1.safetensors"


def test_refresh_calls_the_webui_reloaders(a1111, monkeypatch) -> None:
    modules = a1111()
    networks = SimpleNamespace(list_available_networks=lambda: modules.record("list_available_networks"))
    monkeypatch.setitem(sys.modules, "networks", networks)
    host = WebUIHost()
    for kind in ("embeddings", "hypernetworks", "checkpoints", "lora", "aesthetic_embeddings"):
        host.refresh(kind)
    assert modules.CALLS == [
        ("load_textual_inversion_embeddings", True),
        ("reload_hypernetworks",),
        ("refresh_checkpoints",),
        ("list_available_networks",),
    ]
    monkeypatch.delitem(sys.modules, "networks")
    host.refresh("lora")  # Lora extension disabled: nothing to call, no error


@dataclass(frozen=True)
class CountJob(JobSpec):
    kind: ClassVar[str] = "count_job"
    steps: int = 3


@pytest.fixture
def count_job(fake_loader):
    """A job emitting `steps` steps inside model_for_training, as a training job does; it waits at step 2
    until the test lets it go on."""
    at_step_two = threading.Event()
    go_on = threading.Event()

    def run(spec, host, reporter, control):
        with host.model_for_training():
            reporter(ProgressEvent("start", job="count", total=spec.steps))
            for step in range(1, spec.steps + 1):
                if control.interrupted:
                    return
                reporter(ProgressEvent("step", job="count", step=step, total=spec.steps, loss=0.25))
                if step == 2:
                    at_step_two.set()
                    go_on.wait(5)
            reporter(ProgressEvent("done", job="count", step=spec.steps, total=spec.steps))

    registry.register(registry.Method(CountJob, run, "Count"))
    yield at_step_two, go_on
    registry.unregister(CountJob.kind)


def test_progress_is_mirrored_into_shared_state(a1111, count_job) -> None:
    modules = a1111()
    at_step_two, go_on = count_job
    runner = JobRunner(WebUIHost())
    job = runner.submit(CountJob())
    assert at_step_two.wait(5)
    state = modules.shared.state
    assert (state.job, state.job_no, state.job_count) == ("liandan count", 2, 3)
    assert state.textinfo == "count step 2/3, loss 0.25000"
    go_on.set()
    assert runner.wait(job, timeout=10).state == "done"
    assert state.history == [("begin", "liandan"), ("end", "liandan count", 3, 3)]
    runner.close(timeout=5)


def test_a_preprocess_job_holds_the_webui_and_shows_in_its_progress(a1111, tmp_path: Path) -> None:
    """Preprocessing loads no checkpoint, but its captioners use the device: it takes the queue lock as
    A1111's own preprocessing did, so the WebUI's progress shows it and a txt2img waits."""
    from PIL import Image

    from liandan.preprocess.job import PreprocessJob

    modules = a1111()
    source = tmp_path / "source"
    source.mkdir()
    for index in range(3):
        Image.new("RGB", (80, 64), (index * 60, 0, 0)).save(source / f"img{index}.png")
    runner = JobRunner(WebUIHost())
    job = runner.submit(PreprocessJob(source=source, destination=tmp_path / "out", width=64, height=64))
    assert runner.wait(job, timeout=30).state == "done"
    assert modules.shared.state.history == [("begin", "liandan"), ("end", "liandan preprocess", 3, 3)]
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    runner.close(timeout=5)


def test_a1111_interrupt_button_stops_our_job(a1111, count_job) -> None:
    modules = a1111()
    at_step_two, go_on = count_job
    runner = JobRunner(WebUIHost())
    job = runner.submit(CountJob(steps=10))
    assert at_step_two.wait(5)
    modules.shared.state.interrupt()  # what A1111's Interrupt button / POST /sdapi/v1/interrupt do
    modules.shared.state.history.clear()
    go_on.set()
    status = runner.wait(job, timeout=10)
    assert status.state == "interrupted" and status.step == 3  # noticed at the next event
    assert modules.shared.state.history == [("end", "liandan count", 3, 10)]
    runner.close(timeout=5)


def test_unload_setting_off_keeps_the_webui_model_where_it_is(a1111, fake_loader) -> None:
    modules = a1111()
    modules.shared.opts.liandan_unload_webui_model = False
    with WebUIHost().model_for_training():
        assert modules.sd_models.model_data.sd_model.device == "cuda"
    assert not [c for c in modules.CALLS if c[0] in ("unload_model_weights", "send_model_to_device")]


# --- scripts/liandan.py, loaded the way A1111 loads extension scripts -----------------------------------


def _load_entry_script():
    """scripts/liandan.py run as A1111 runs it: at start, and again at every UI reload."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("liandan_entry", REPO / "scripts" / "liandan.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def entry_script(a1111, count_job, monkeypatch):
    import liandan.host.webui

    pytest.importorskip("gradio", reason="the entry script builds Gradio tabs (not in the newest-stack job)")
    modules = a1111()
    monkeypatch.setattr(liandan.host.webui, "_runner", None)  # a queue of this test's stand-in WebUI
    yield _load_entry_script(), modules
    if liandan.host.webui._runner is not None:
        liandan.host.webui._runner.close(timeout=5)


def test_entry_script_registers_its_callbacks_and_settings(entry_script) -> None:
    _, modules = entry_script
    registered = {k: v for k, v in modules.script_callbacks.callbacks.items() if v}
    # the aesthetic wrapper is the one patch: undone when the script unloads
    assert set(registered) == {"ui_tabs", "ui_settings", "app_started", "script_unloaded"}
    for callback in registered["ui_settings"]:
        callback()
    labels = modules.shared.opts.data_labels
    assert labels["liandan_log_dir"].section == ("liandan", "Liandan")
    assert modules.shared.opts.liandan_log_dir == "textual_inversion"
    assert modules.shared.opts.liandan_unload_webui_model is True


def test_entry_script_tab_is_the_shared_ui(entry_script) -> None:
    script, _ = entry_script
    ((blocks, title, elem_id),) = script.on_ui_tabs()
    assert (title, elem_id) == ("Liandan", "liandan")
    labels = [c["props"]["label"] for c in blocks.get_config_file()["components"] if c["type"] == "tabitem"]
    assert labels == [m.title for m in registry.METHODS.values() if m.tab is not None]
    texts = [str(c["props"].get("value", "")) for c in blocks.get_config_file()["components"]]
    assert not [text for text in texts if "failed to load" in text], "a tab failed to build"


def test_entry_script_rest_routes(entry_script, count_job, tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    script, _ = entry_script
    _, go_on = count_job
    app = FastAPI()
    script.on_app_started(None, app)  # --nowebui passes no Blocks and serves the API
    client = TestClient(app)
    assert client.get("/liandan/v1/jobs").json() == {"jobs": []}

    bad = client.post("/liandan/v1/jobs", json={"kind": "count_job", "stepz": 3})
    assert bad.status_code == 422 and "unknown setting(s) for CountJob: stepz" in bad.json()["detail"]
    assert client.post("/liandan/v1/jobs", json={"kind": "nope"}).status_code == 422

    job_id = client.post("/liandan/v1/jobs", json={"kind": "count_job", "steps": 10}).json()["id"]
    assert client.post("/liandan/v1/interrupt").json() == {"interrupted": True}
    go_on.set()
    status = script.runner().wait(job_id, timeout=10)
    assert status.state == "interrupted"
    assert client.get(f"/liandan/v1/jobs/{job_id}").json()["state"] == "interrupted"
    assert client.get("/liandan/v1/jobs/other-1").status_code == 404

    # the spec's own message is the response; no tab was built, and every kind is known (preprocess too)
    assert {"textual_inversion", "hypernetwork", "preprocess"} <= set(
        client.get("/liandan/v1/kinds").json()["kinds"]
    )
    typo = {"kind": "textual_inversion", "name": "cat", "train": {"learning_rate": 0.01}}
    assert "did you mean 'learn_rate'" in client.post("/liandan/v1/jobs", json=typo).json()["detail"]
    assert "has no 'kind'" in client.post("/liandan/v1/jobs", json={"name": "cat"}).json()["detail"]
    outside = client.post("/liandan/v1/jobs", json={"kind": "preprocess", "source": str(tmp_path / "x")})
    assert outside.status_code == 403 and "outside the folders" in outside.json()["detail"]
    source = tmp_path / "webui" / "nowhere"  # inside the WebUI's folder: REST jobs write only there
    job_id = client.post("/liandan/v1/jobs", json={"kind": "preprocess", "source": str(source)}).json()["id"]
    status = script.runner().wait(job_id, timeout=30)
    assert status.state == "error" and "nowhere does not exist" in status.error


def test_jobs_survive_a_ui_reload(entry_script, count_job) -> None:
    """Reload UI runs scripts/liandan.py again: a running job keeps going and the new tab's queue lists it."""
    script, modules = entry_script
    _, go_on = count_job
    before = script.runner()
    job_id = before.submit(script.liandan.jobs.job_from_dict({"kind": "count_job", "steps": 3}))
    for callback in modules.script_callbacks.callbacks.get("script_unloaded", []):
        callback()
    reloaded = _load_entry_script()
    assert reloaded.runner() is before
    go_on.set()
    assert reloaded.runner().wait(job_id, timeout=10).state == "done"
    assert [status.id for status in reloaded.runner().jobs()] == [job_id]


def test_a_failed_job_is_reported_in_the_webui_console(entry_script, capsys) -> None:
    from liandan.errors import DatasetError

    def fail(spec, host, reporter, control):
        raise DatasetError("dataset folder /nowhere does not exist or is not a folder")

    script, _ = entry_script
    registry.unregister(CountJob.kind)  # count_job's teardown unregisters this one
    registry.register(registry.Method(CountJob, fail, "Count"))
    job_id = script.runner().submit(CountJob())
    assert script.runner().wait(job_id, timeout=10).state == "error"
    console = capsys.readouterr().err
    assert "failed: dataset folder /nowhere does not exist" in console


# --- A1111's shared.state and queue_lock belong to whoever holds the lock -------------------------------


def test_state_is_only_touched_while_holding_the_generation_lock(a1111, fake_loader) -> None:
    """A txt2img owns shared.state while it holds queue_lock: our job's events before we get the lock
    (loading, "start") and after we let it go ("done") must leave that state alone."""
    modules = a1111()
    state = modules.shared.state
    host = WebUIHost()
    with modules.call_queue.queue_lock:  # a txt2img is generating
        state.begin(job="txt2img")
        state.job_count, state.sampling_step = 1, 7
        state.interrupt()  # ... and the user pressed Interrupt for it
        host.reporter(ProgressEvent("start", job="ti", total=10, message="loading"))
        assert (state.job, state.job_count, state.sampling_step, state.interrupted) == ("txt2img", 1, 7, True)
        assert not host.control.interrupted  # that Interrupt was for the txt2img, not for us
        state.end()
    state.history.clear()
    with host.model_for_training():
        assert state.history == [("begin", "liandan")]
        host.reporter(ProgressEvent("start", job="ti", total=10))
        host.reporter(ProgressEvent("step", job="ti", step=4, total=10, loss=0.5))
        assert (state.job, state.job_no, state.job_count) == ("liandan ti", 4, 10)
    # ended before the lock went back, so a txt2img waiting for it starts on a clean state
    assert state.history[-1] == ("end", "liandan ti", 4, 10)
    state.begin(job="txt2img")
    host.reporter(ProgressEvent("done", job="ti", step=10, total=10))
    assert state.job == "txt2img" and state.history[-1] == ("begin", "txt2img")


def test_a_checkpoint_switch_while_training_waits_for_the_job_and_then_applies(a1111, fake_loader) -> None:
    """The top-left dropdown reloads the model under queue_lock (A1111 wraps its onchange in
    wrap_queued_call), which the job holds: the switch waits, and lands on the restored WebUI model."""
    modules = a1111()
    sd_models = modules.sd_models
    other = next(title for title in sd_models.checkpoints_list if title.startswith("other"))
    switched = threading.Event()

    def choose_in_the_dropdown() -> None:
        modules.shared.opts.sd_model_checkpoint = other
        with modules.call_queue.queue_lock:
            sd_models.reload_model_weights()
        switched.set()

    host = WebUIHost()
    with host.model_for_training():
        chooser = threading.Thread(target=choose_in_the_dropdown)
        chooser.start()
        assert not switched.wait(0.2), "the model was switched under a running job"
        assert sd_models.model_data.sd_model.sd_checkpoint_info.title.startswith("tiny-sd1")
    chooser.join(10)
    assert switched.is_set()
    model = sd_models.model_data.sd_model
    assert model.sd_checkpoint_info.title == other and model.device == "cuda"


@pytest.mark.parametrize("press", ["interrupt", "stop_generating"])
def test_a1111_interrupt_while_training_stops_our_job(a1111, fake_loader, press: str) -> None:
    modules = a1111()
    host = WebUIHost()
    with host.model_for_training():
        getattr(modules.shared.state, press)()
        host.reporter(ProgressEvent("step", job="ti", step=1, total=10))
        assert host.control.interrupted


def test_training_bundle_leaves_the_gpu_before_the_webui_model_returns(a1111, monkeypatch) -> None:
    """The caller still holds the bundle (and an exception's traceback holds everything), so dropping our
    reference frees nothing: the bundle is moved to the CPU before the WebUI model goes back to the GPU."""
    modules = a1111()

    class Bundle:
        short_hash = None
        text_encoders, unet, vae = [], None, None

        def to(self, device: str):
            modules.record("bundle.to", device)
            return self

    monkeypatch.setitem(
        sys.modules, "liandan.models.loading", SimpleNamespace(load_bundle=lambda p: Bundle())
    )
    with pytest.raises(RuntimeError), WebUIHost().model_for_training():
        raise RuntimeError("out of memory")
    moves = [c for c in modules.CALLS if c[0] in ("bundle.to", "send_model_to_device")]
    assert moves == [("bundle.to", "cpu"), ("send_model_to_device", "to(device)")]


def test_refresh_holds_the_generation_lock_and_loads_no_model(a1111, monkeypatch) -> None:
    """As A1111's POST /sdapi/v1/refresh-embeddings and refresh-checkpoints: under queue_lock, so a running
    txt2img does not see its embeddings or checkpoint list vanish mid-generation."""
    modules = a1111()
    seen: list[bool] = []
    monkeypatch.setattr(
        modules.shared, "refresh_checkpoints", lambda: seen.append(modules.call_queue.queue_lock.locked())
    )
    host = WebUIHost()
    host.refresh("checkpoints")
    assert seen == [True]
    modules.sd_models.model_data.sd_model = None  # still loading at start-up, or failed to load
    host.refresh("embeddings")  # the embedding list is rebuilt when the model loads
    assert ("load_model",) not in modules.CALLS


def test_entry_script_rest_routes_follow_the_webui_api_flags(entry_script) -> None:
    """The routes read and write any folder: like A1111's own API they exist only with --api (or
    --nowebui), and --api-auth guards them; gradio's --gradio-auth never covers routes added to the app."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    script, modules = entry_script
    app = FastAPI()
    script.on_app_started(object(), app)  # the UI, started without --api
    assert TestClient(app).get("/liandan/v1/jobs").status_code == 404

    modules.shared.cmd_opts.api, modules.shared.cmd_opts.api_auth = True, "ann:secret,bob:pw"
    app = FastAPI()
    script.on_app_started(object(), app)
    client = TestClient(app)
    assert client.get("/liandan/v1/jobs").status_code == 401
    assert client.get("/liandan/v1/jobs", auth=("ann", "wrong")).status_code == 401
    assert client.get("/liandan/v1/jobs", auth=("bob", "pw")).json() == {"jobs": []}


def test_our_layers_call_torch_forward_not_the_lora_extensions_process_wide_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    import torch

    from liandan.host.webui import LORA_PATCHES_KEY, call_torch_forwards
    from liandan.models.hypernetwork_modules import Hypernetwork
    from liandan.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd1")
    torch_linear, torch_conv = torch.nn.Linear.forward, torch.nn.Conv2d.forward
    through_patch: list[torch.nn.Module] = []

    def network_linear_forward(self, x):  # what lora_patches.py installs, less its network lookups
        through_patch.append(self)
        return torch_linear(self, x)

    def network_conv_forward(self, x):
        through_patch.append(self)
        return torch_conv(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", network_linear_forward)
    monkeypatch.setattr(torch.nn.Conv2d, "forward", network_conv_forward)
    originals = {(torch.nn.Linear, "forward"): torch_linear, (torch.nn.Conv2d, "forward"): torch_conv}
    patches = types.SimpleNamespace(originals={LORA_PATCHES_KEY: originals, "other": {}})
    monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(patches=patches))
    monkeypatch.setitem(sys.modules, "modules.patches", patches)
    wrapped = bundle.unet.conv_out
    wrapper = types.MethodType(lambda self, x: torch_conv(self, x), wrapped)  # a library's own, set before
    wrapped.forward = wrapper

    latents, timestep = torch.randn(1, 4, 8, 8), torch.tensor([10])
    context = bundle.text_encoders[0](torch.tensor([[0, 1, 2]]))[0]
    with torch.no_grad():
        patched = bundle.unet(latents, timestep, context).sample
    assert through_patch
    models = [*bundle.text_encoders, bundle.unet, bundle.vae]
    changed = call_torch_forwards(models)
    through_patch.clear()
    with torch.no_grad():
        direct = bundle.unet(latents, timestep, context).sample
        bundle.text_encoders[0](torch.tensor([[0, 1, 2]]))
    assert changed > 0 and through_patch == []
    assert torch.equal(direct, patched)
    assert vars(wrapped)["forward"] is wrapper
    assert call_torch_forwards(models) == 0  # once is all

    # a method's modules, built after the bundle: a hypernetwork's layers
    hypernetwork = Hypernetwork("h", [32], [1, 2, 1], add_layer_norm=True)
    context = torch.randn(1, 3, 32)
    with torch.no_grad():
        before = hypernetwork(context)
    assert through_patch and all(layer in set(hypernetwork.modules()) for layer in through_patch)
    assert call_torch_forwards([hypernetwork]) == 4  # two modules of two Linear layers
    through_patch.clear()
    with torch.no_grad():
        after = hypernetwork(context)
    assert through_patch == []
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
