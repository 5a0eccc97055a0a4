import datetime as dt
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from liandan.errors import DatasetError
from liandan.host.standalone import StandaloneHost
from liandan.jobs import DataSpec, TextualInversionJob
from liandan.progress import Control, Reporter
from liandan.train.training_job import find_run_dir, run_training_job

EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_run_dir_is_dated_like_a1111(tmp_path: Path) -> None:
    day = dt.date(2026, 11, 25)
    assert find_run_dir(tmp_path, "cat", resume=True, today=day) == tmp_path / "2026-11-25" / "cat"


def test_resumable_run_keeps_the_folder_it_started_in(tmp_path: Path) -> None:
    (tmp_path / "2026-11-20" / "cat" / "state").mkdir(parents=True)
    later = dt.date(2026, 11, 25)
    assert find_run_dir(tmp_path, "cat", resume=True, today=later) == tmp_path / "2026-11-20" / "cat"
    assert find_run_dir(tmp_path, "cat", resume=False, today=later) == tmp_path / "2026-11-25" / "cat"
    assert find_run_dir(tmp_path, "dog", resume=True, today=later) == tmp_path / "2026-11-25" / "dog"


def _recording(contexts: list, trained: tuple[torch.nn.Module, ...] = ()):
    """A make_method keeping each context it gets, with a method that has nothing to close."""

    def make_method(context):
        contexts.append(context)
        return SimpleNamespace(close=lambda: None, trainable_modules=lambda: list(trained))

    return make_method


def test_missing_dataset_folder_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    job = TextualInversionJob(name="cat", data=DataSpec(folder=tmp_path / "nowhere"))

    def never(_context):
        raise AssertionError("no method may be built")

    with pytest.raises(DatasetError, match="nowhere does not exist"):
        run_training_job(
            job,
            host,
            Reporter(),
            Control(),
            name="cat",
            loss_csv_name="x.csv",
            make_method=never,
        )
    assert not list(host.folders.checkpoints.iterdir())  # nothing loaded, nothing written


def test_the_method_and_the_loop_share_one_accelerator_and_its_device(
    train64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `accelerate launch` a bare "cuda" is GPU 0 on every rank: the method must be placed on the
    device of the Accelerator the loop then trains with (made before the model loads). The host sees the
    method's modules before the loop runs (inside A1111 it makes their layers call torch's forwards)."""

    from liandan.train import loop
    from liandan.train.loop import TrainResult

    made, seen = [], {}
    real_make = loop.make_accelerator

    def make_accelerator(spec):
        made.append(real_make(spec))
        return made[-1]

    def fake_train(method, dataset, spec, **kwargs):
        seen["accelerator"] = kwargs.get("accelerator")
        seen["prepared before training"] = list(prepared)
        return TrainResult(0, 0, "max_steps", "done")

    monkeypatch.setattr(loop, "make_accelerator", make_accelerator)
    monkeypatch.setattr(loop, "train", fake_train)
    folder = train64
    host = StandaloneHost(tmp_path / "data")
    job = TextualInversionJob(name="cat", data=DataSpec(folder=folder, width=64, height=64))
    prepared: list = []
    monkeypatch.setattr(host, "prepare_trainable", prepared.append)
    contexts: list = []
    trained = torch.nn.Linear(2, 2)
    run_training_job(job, host, Reporter(), Control(), name="cat", loss_csv_name="x.csv",
                     make_method=_recording(contexts, (trained,)))  # fmt: skip
    assert len(made) == 1 and seen["accelerator"] is made[0]
    assert seen["prepared before training"] == [[trained]]
    assert contexts[0].device == made[0].device and contexts[0].is_main


def test_accumulation_beyond_an_epoch_is_lowered_like_a1111(tmp_path: Path) -> None:
    """4 images at batch 1 hold 4 batches an epoch: accumulating 8 is lowered to 4, with a message, instead
    of refusing the dataset."""
    from liandan.methods.textual_inversion import run_textual_inversion
    from liandan.progress import ProgressEvent

    host = StandaloneHost(tmp_path / "data")
    defaults = TextualInversionJob(name="small")
    job = TextualInversionJob(
        name="small",
        train=defaults.train.replace(max_steps=1, gradient_accumulation=8, save_every=0, preview_every=0),
        data=DataSpec(folder=EXAMPLE_IMAGES, width=64, height=64),
        preview=defaults.preview.replace(self_test=False),
    )
    events: list[ProgressEvent] = []
    result = run_textual_inversion(job, host, Reporter(events.append), Control())
    assert result.step == 1
    assert any("gradient accumulation lowered to 4" in e.message for e in events)
    (done,) = [e for e in events if e.kind == "done"]  # the job says it once, with the loop's loss
    assert done.message == "finished: 1 steps" and done.loss is not None and done.paths
    assert sum("finished" in e.message for e in events) == 1


def test_a_half_precision_vae_caches_latents_in_float32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 checkpoints load a half VAE, and SDXL's turns latents into NaN in half precision."""
    import contextlib

    import torch

    from liandan.train import loop
    from liandan.train.loop import TrainResult

    host = StandaloneHost(tmp_path / "data")
    real = host.model_for_training

    @contextlib.contextmanager
    def half_vae(checkpoint=None):
        with real(checkpoint) as bundle:
            bundle.vae.to(torch.float16)
            yield bundle

    monkeypatch.setattr(host, "model_for_training", half_vae)
    monkeypatch.setattr(loop, "train", lambda *a, **k: TrainResult(0, 0, "max_steps", "done"))
    job = TextualInversionJob(name="cat", data=DataSpec(folder=EXAMPLE_IMAGES, width=64, height=64))
    contexts: list = []
    run_training_job(job, host, Reporter(), Control(), name="cat", loss_csv_name="x.csv",
                     make_method=_recording(contexts))  # fmt: skip
    latents = contexts[0].dataset[0]["latents"]
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    assert next(contexts[0].bundle.vae.parameters()).dtype == torch.float32


def test_the_method_is_closed_when_training_fails_and_the_checkpoint_is_resolved_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hypernetwork's hooks sit on a UNet that may be the host's: close() runs whatever way the loop ends.
    The context carries one checkpoint reference, with the short hash and family of the loaded model."""
    # (a model switched in the WebUI meanwhile must not change which model the job trains)
    from liandan.train import loop

    def broken_train(*args, **kwargs):
        raise RuntimeError("the loop broke")

    host = StandaloneHost(tmp_path / "data")
    resolved = []
    real_resolve = host.resolve_checkpoint
    monkeypatch.setattr(
        host, "resolve_checkpoint", lambda model: resolved.append(model) or real_resolve(model)
    )
    monkeypatch.setattr(loop, "train", broken_train)
    closed, contexts = [], []

    def make_method(context):
        contexts.append(context)
        return SimpleNamespace(close=lambda: closed.append(True), trainable_modules=list)

    job = TextualInversionJob(name="cat", data=DataSpec(folder=EXAMPLE_IMAGES, width=64, height=64))
    with pytest.raises(RuntimeError, match="the loop broke"):
        run_training_job(
            job, host, Reporter(), Control(), name="cat", loss_csv_name="x.csv", make_method=make_method
        )
    checkpoint = contexts[0].checkpoint
    # the job's "" (the current model) is resolved once; the host is then handed that file, not "" again
    assert closed == [True] and resolved[0] == "" and set(resolved[1:]) == {checkpoint.path}
    assert checkpoint.family == "sd1" and checkpoint.short_hash and len(checkpoint.short_hash) == 10


def test_a_job_trains_on_several_datasets_and_scores_a_held_out_set(tmp_path: Path) -> None:
    """`data` as before, `[[extra_data]]` with its own weight and template, a `[validation]` folder; relative
    folders are the job file's; the state stores the whole job."""
    import json
    import shutil

    from liandan.jobs import load_job_file
    from liandan.methods.textual_inversion import run_textual_inversion
    from liandan.progress import ProgressEvent

    for folder, names in (("class", ["shape0", "shape1"]), ("val", ["shape2"])):
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(EXAMPLE_IMAGES / f"{name}.png", tmp_path / folder)
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        'kind = "textual_inversion"\nname = "mix"\n'
        "[train]\nmax_steps = 4\nsave_every = 0\npreview_every = 0\n"
        f'[data]\nfolder = "{EXAMPLE_IMAGES.as_posix()}"\nwidth = 64\nheight = 64\n'
        '[[extra_data]]\nfolder = "class"\nwidth = 64\nheight = 64\nweight = 0.5\n'
        'template = "liandan_subject.txt"\n'
        '[validation]\nfolder = "val"\nwidth = 64\nheight = 64\nevery = 2\ntimesteps = 2\n'
        "[preview]\nself_test = false\n"
    )
    job = load_job_file(job_file)
    host = StandaloneHost(tmp_path / "data")
    events: list[ProgressEvent] = []
    result = run_textual_inversion(job, host, Reporter(events.append), Control())
    assert result.step == 4 and [step for step, _ in result.validation_losses] == [2, 4]
    assert sum("validation loss" in e.message for e in events) == 2
    assert any(
        "caching latents of 6 images" in e.message for e in events
    )  # 4 + 2; the held-out image is cached too
    (state,) = (tmp_path / "data").rglob("state/job.json")
    saved = json.loads(state.read_text())
    assert saved["extra_data"][0]["folder"] == str(tmp_path / "class")
    assert saved["validation"]["folder"] == str(tmp_path / "val")


@pytest.mark.parametrize("requested", [0, 3])
def test_a_cpu_job_trains_on_the_threads_asked_and_gives_them_back(
    train64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requested: int
) -> None:
    """One thread is what a busy machine needs; the WebUI generates in the same process afterwards, with
    its own thread count."""
    import torch

    from liandan.jobs import TrainSpec
    from liandan.train import loop
    from liandan.train.loop import TrainResult

    seen, events = {}, []

    def fake_train(method, dataset, spec, **kwargs):
        seen["threads"] = torch.get_num_threads()
        return TrainResult(0, 0, "max_steps", "done")

    monkeypatch.setattr(loop, "train", fake_train)
    before = torch.get_num_threads()
    expected = requested or before
    job = TextualInversionJob(
        name="cat", data=DataSpec(folder=train64, width=64, height=64), train=TrainSpec(cpu_threads=requested)
    )
    run_training_job(job, StandaloneHost(tmp_path / "data"), Reporter(events.append), Control(), name="cat",
                     loss_csv_name="x.csv", make_method=_recording([]))  # fmt: skip
    assert seen["threads"] == expected
    assert torch.get_num_threads() == before
    assert any(f"with {expected} thread(s)" in (event.message or "") for event in events)


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="needs a machine without a CUDA device")
def test_optimizer_steps_do_not_load_nvml_each_time_where_there_is_no_cuda_device(
    train64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside the WebUI lightning_fabric sets PYTORCH_NVML_BASED_CUDA_CHECK=1; torch's AdamW then asks NVML
    (a dlopen that fails, ~1 ms in a WebUI process) on every step unless the run answers from the runtime."""
    from liandan.train import loop
    from liandan.train.loop import TrainResult
    from liandan.train.training_job import NVML_CHECK

    monkeypatch.setenv(NVML_CHECK, "1")
    nvml_probes, probes_while_training = [], []
    real_probe = torch.cuda._raw_device_count_nvml
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: nvml_probes.append(1) or real_probe())

    def fake_train(method, dataset, spec, **kwargs):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.AdamW([weight], lr=0.1)
        nvml_probes.clear()
        for _ in range(5):
            weight.sum().backward()
            optimizer.step()
        probes_while_training.append(len(nvml_probes))
        return TrainResult(5, 5, "max_steps", "done")

    monkeypatch.setattr(loop, "train", fake_train)
    job = TextualInversionJob(name="cat", data=DataSpec(folder=train64, width=64, height=64))
    run_training_job(job, StandaloneHost(tmp_path / "data"), Reporter(), Control(), name="cat",
                     loss_csv_name="x.csv", make_method=_recording([]))  # fmt: skip
    assert probes_while_training == [0]
    assert os.environ[NVML_CHECK] == "1"  # the setting is back for the rest of the process
