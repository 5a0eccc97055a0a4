"""DreamBooth end to end on the tiny models: the checkpoint A1111 lists (its key set, our loader, diffusers'
from_single_file, modelspec metadata), a fixed-seed image that differs from the base model's, class images
made to the count and reused, the host's checkpoint list refreshed, a separate VAE baked in, the text
encoder trained and stopped, the loss falls, resume is bit-exact, SD2 v-prediction and SDXL, and bad input."""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from liandan.errors import CheckpointError, ConfigError, DatasetError, DiskFullError, TrainingStopped
from liandan.formats.checkpoint import read_metadata
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import run_job
from liandan.jobs import ConceptSpec, DataSpec, DreamBoothJob, PreviewSpec, TrainSpec, ValidationSpec
from liandan.methods.dreambooth import DreamBoothMethod
from liandan.models.loading import load_bundle
from liandan.models.sampling import generate
from liandan.models.saving import ldm_state_dict
from liandan.progress import Control, Reporter

EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


class RecordingHost(StandaloneHost):
    """The standalone host, noting every refresh (inside the WebUI: the checkpoint dropdown's)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.refreshed: list[str] = []

    def refresh(self, kind) -> None:
        self.refreshed.append(kind)


def make_job(root: Path, **changes) -> DreamBoothJob:
    concept = {"instance_folder": root / "me", "instance_prompt": "sks shape, [filewords]",
               "class_folder": root / "shapes", "class_prompt": "a shape", "num_class_images": 2,
               "class_steps": 1}  # fmt: skip
    concept.update(changes.pop("concept", {}))
    train = {"learn_rate": "0.0005", "lr_scheduler": "constant", "max_steps": 4, "save_every": 0,
             "preview_every": 0, "seed": 0}  # fmt: skip
    train.update(changes.pop("train", {}))
    preview = {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": False}
    preview.update(changes.pop("preview", {}))
    data = {"width": 64, "height": 64, **changes.pop("data", {})}
    # named: a fresh data dir's first checkpoint is the tiny SD1, but after a run it is "db"
    fields = {
        "name": "db",
        "model": "liandan-tiny-sd1",
        "save_dtype": "fp32",
        "concepts": (ConceptSpec(**concept),),
    }
    fields.update(changes)
    return DreamBoothJob(train=TrainSpec(**train), data=DataSpec(**data),
                         preview=PreviewSpec(**preview), **fields)  # fmt: skip


def run(job: DreamBoothJob, host: StandaloneHost, control: Control | None = None, on_event=None):
    events: list = []
    host.current_checkpoint()  # writes the tiny models into a fresh data dir

    def record(event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    return run_job(job, host, Reporter(record), control or Control()), events


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE_IMAGES, tmp_path / "me")
    return tmp_path


@dataclass
class Sd1Run:
    root: Path
    host: RecordingHost
    job: DreamBoothJob
    events: list
    base: Path
    vae: dict[str, torch.Tensor] = field(default_factory=dict)


@pytest.fixture(scope="module")
def sd1_run(tmp_path_factory) -> Sd1Run:
    """One SD1 run with everything on: prior preservation, the text encoder trained, a separate VAE, step
    copies, the self-test."""
    root = tmp_path_factory.mktemp("sd1")
    shutil.copytree(EXAMPLE_IMAGES, root / "me")
    host = RecordingHost(root / "data")
    base = host.current_checkpoint().path
    # an A1111 VAE file: the checkpoint's VAE keys without "first_stage_model.", weights moved
    state = ldm_state_dict(load_bundle(base))
    vae = {
        k.removeprefix("first_stage_model."): v * 1.01
        for k, v in state.items()
        if k.startswith("first_stage_model.")
    }
    (host.folders.models / "VAE").mkdir(parents=True)
    save_file(vae, str(host.folders.models / "VAE" / "moved.vae.safetensors"))
    job = make_job(root, train_text_encoder=True, vae="moved.vae.safetensors",
                   train={"save_every": 2}, preview={"self_test": True})  # fmt: skip
    result, events = run(job, host)
    assert result.step == 4
    return Sd1Run(root, host, job, events, base, vae)


def test_the_checkpoint_lands_where_a1111_lists_it_with_a1111s_key_set(sd1_run: Sd1Run, fixtures_dir) -> None:
    path = sd1_run.host.folders.checkpoints / "db.safetensors"
    assert path.is_file() and path.with_suffix(".yaml").is_file()  # tiny shapes need their yaml
    a1111_keys = {
        line.split("\t")[0]
        for line in (fixtures_dir / "model" / "tiny-sd1.keys.txt").read_text().splitlines()
    }
    assert set(tensors(path)) == a1111_keys
    assert sd1_run.host.refreshed == ["checkpoints"]
    copies = sorted(p.name for p in sd1_run.host.folders.logs.glob("*/db/checkpoints/*.safetensors"))
    assert copies == ["db-2.safetensors", "db-4.safetensors"]
    assert not list(path.parent.glob(".*.tmp"))


def test_the_metadata_says_what_was_trained(sd1_run: Sd1Run) -> None:
    metadata = read_metadata(sd1_run.host.folders.checkpoints / "db.safetensors")
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1"
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert metadata["modelspec.resolution"] == "64x64"
    assert metadata["liandan.trained"] == "unet,text_encoder" and metadata["liandan.step"] == "4"
    assert metadata["modelspec.trigger_phrase"] == "sks shape, [filewords]"
    assert "liandan-tiny-sd1" in metadata["liandan.base_model"]


def test_the_checkpoint_loads_in_ours_and_diffusers_and_differs_from_the_base(
    sd1_run: Sd1Run, tmp_path
) -> None:
    from diffusers import StableDiffusionPipeline

    from liandan.models.diffusers_folder import save_diffusers_folder

    path = sd1_run.host.folders.checkpoints / "db.safetensors"
    trained, base = load_bundle(path), load_bundle(sd1_run.base)
    # diffusers 0.31 offline: the component configs from a diffusers folder of the same architecture
    config = save_diffusers_folder(base, tmp_path / "config")
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True)
    assert torch.equal(pipe.unet.conv_in.weight, trained.unet.conv_in.weight)
    assert not torch.equal(trained.unet.conv_in.weight, base.unet.conv_in.weight)
    embeddings = [b.text_encoders[0].get_input_embeddings().weight for b in (trained, base)]
    assert not torch.equal(*embeddings)  # the text encoder trained
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, embeddings[0])
    saved_vae = tensors(path)
    for key, value in sd1_run.vae.items():  # the separate VAE is the file's, untrained
        assert torch.equal(saved_vae[f"first_stage_model.{key}"], value), key
    images = [
        generate(b, "sks shape", steps=2, cfg_scale=7.0, seed=3, width=64, height=64) for b in (trained, base)
    ]
    assert images[0].tobytes() != images[1].tobytes()
    self_tests = [e for e in sd1_run.events if e.kind == "preview" and e.message == "self-test"]
    assert self_tests and not [e for e in sd1_run.events if "changes nothing" in e.message]


def test_class_images_are_made_once_and_reused(sd1_run: Sd1Run) -> None:
    assert len(list((sd1_run.root / "shapes").glob("*.png"))) == 2
    made = [e for e in sd1_run.events if e.message.startswith("making 2 class images")]
    assert len(made) == 1
    again = sd1_run.job.replace(train=sd1_run.job.train.replace(max_steps=5))
    result, events = run(again, sd1_run.host)
    assert (result.start_step, result.step) == (4, 5)
    assert not [e for e in events if "class images" in e.message]
    assert len(list((sd1_run.root / "shapes").glob("*.png"))) == 2


@pytest.mark.slow
def test_the_validation_loss_falls(root: Path) -> None:
    validation = ValidationSpec(folder=root / "me", width=64, height=64, every=4, timesteps=4)
    job = make_job(root, validation=validation, train={"learn_rate": "0.001", "max_steps": 12})
    _, events = run(job, StandaloneHost(root / "data"))
    scores = [e.extra["validation_loss"] for e in events if e.extra and "validation_loss" in e.extra]
    assert len(scores) >= 3
    assert scores[-1] < scores[0], scores


@pytest.mark.slow
def test_resume_is_bit_exact_across_the_text_encoder_stop(root: Path) -> None:
    """Interrupted at step 3, after the text encoder stopped at 2, and resumed: the file is the same to the
    bit as one straight run's; the text encoder stopped in both."""
    job = make_job(root, train_text_encoder=True, text_encoder_stop_step=2, text_encoder_lr_scale=0.5,
                   train={"save_every": 2})  # fmt: skip
    straight = StandaloneHost(root / "straight")
    run(job, straight)
    resumed, control = StandaloneHost(root / "resumed"), Control()
    results = [run(job, resumed, control, lambda e: e.kind == "step" and e.step == 3 and control.interrupt())]
    results.append(run(job, resumed))
    assert [(r.stopped_reason, r.start_step, r.step) for r, _ in results] == [
        ("interrupted", 0, 3),
        ("max_steps", 3, 4),
    ]
    a, b = (tensors(h.folders.checkpoints / "db.safetensors") for h in (straight, resumed))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    (copy,) = straight.folders.logs.glob("*/db/checkpoints/db-2.safetensors")
    at_two = tensors(copy)
    text = [k for k in a if k.startswith("cond_stage_model.") and a[k].is_floating_point()]
    assert text and all(torch.equal(a[k], at_two[k]) for k in text)  # no text-encoder change after step 2
    unet = [k for k in a if k.startswith("model.diffusion_model.")]
    assert not all(torch.equal(a[k], at_two[k]) for k in unet)


@pytest.mark.slow
def test_sd2_v_prediction_and_sdxl_with_both_text_encoders(root: Path) -> None:
    from a1111_safe_unpickler import check_pt

    from liandan.models.saving import save_checkpoint
    from liandan.models.tiny import tiny_bundle

    host = StandaloneHost(root / "data")
    host.current_checkpoint()  # writes the tiny models
    sd2 = save_checkpoint(tiny_bundle("sd2"), host.folders.checkpoints / "tiny-sd2.safetensors")
    job = make_job(root, model=str(sd2), name="two", save_format="ckpt", save_dtype="bf16")
    assert run(job, host)[0].step == 4
    path = host.folders.checkpoints / "two.ckpt"
    check_pt(path)  # A1111's safe unpickler takes it
    two = load_bundle(path)
    assert (two.family, two.prediction_type) == ("sd2", "v_prediction")
    assert two.unet.conv_in.weight.dtype == torch.bfloat16

    # batch 2: each image's size conditioning with its own latents; both encoders train
    sdxl = make_job(root, model="liandan-tiny-sdxl", name="xl", train_text_encoder=True,
                    train={"batch_size": 2, "max_steps": 2})  # fmt: skip
    assert run(sdxl, host)[0].step == 2
    saved = host.folders.checkpoints / "xl.safetensors"
    assert read_metadata(saved)["liandan.trained"] == "unet,text_encoder,text_encoder_2"
    assert read_metadata(saved)["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    base = tensors(host.folders.checkpoints / "liandan-tiny-sdxl.safetensors")
    trained = tensors(saved)
    assert set(trained) == set(base)
    for prefix in ("conditioner.embedders.0.", "conditioner.embedders.1.", "model.diffusion_model."):
        keys = [k for k in base if k.startswith(prefix) and base[k].is_floating_point()]
        assert any(not torch.equal(base[k], trained[k].to(base[k].dtype)) for k in keys), prefix


def test_without_concepts_it_fine_tunes_on_the_data_folder(root: Path) -> None:
    data = {"folder": root / "me", "template": "liandan_subject_filewords.txt"}
    job = make_job(root, concepts=(), data=data, train={"max_steps": 1})
    result, events = run(job, StandaloneHost(root / "data"))
    assert result.step == 1 and any("prompt template" in e.message for e in events)
    metadata = read_metadata(StandaloneHost(root / "data").folders.checkpoints / "db.safetensors")
    assert metadata["liandan.trained"] == "unet" and "modelspec.trigger_phrase" not in metadata


# --- bad input ------------------------------------------------------------------------------------------


def test_an_empty_instance_folder_is_refused_before_class_images_are_made(root: Path) -> None:
    (root / "empty").mkdir()
    job = make_job(root, concept={"instance_folder": root / "empty"})
    with pytest.raises(DatasetError, match=r"no usable image in dataset folder .*empty"):
        run(job, StandaloneHost(root / "data"))
    assert not (root / "shapes").exists()


def test_a_concept_job_without_concepts_or_folder_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one concept"):
        DreamBoothJob(name="x")


@pytest.mark.parametrize(
    ("key", "message"),
    [("model.diffusion_model.joint_blocks.0.x", "Stable Diffusion 3"), ("double_blocks.0.x", "Flux")],
)
def test_an_unsupported_family_is_refused(root: Path, key: str, message: str) -> None:
    model = root / "other.safetensors"
    save_file({key: torch.zeros(1)}, str(model))
    with pytest.raises(CheckpointError, match=f"{message} checkpoint, which is not supported"):
        run(make_job(root, model=str(model)), StandaloneHost(root / "data"))


def test_running_out_of_gpu_memory_points_at_the_planner(root: Path, monkeypatch) -> None:
    def out_of_memory(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DreamBoothMethod, "loss", out_of_memory)
    job = make_job(root, concept={"num_class_images": 0, "class_folder": Path(), "class_prompt": ""})
    with pytest.raises(TrainingStopped, match=r"out of GPU memory .*python -m liandan plan"):
        run(job, StandaloneHost(root / "data"))


def test_an_existing_checkpoint_is_kept_unless_overwrite(root: Path) -> None:
    host = StandaloneHost(root / "data")
    host.current_checkpoint()  # the tiny models, before "db" would be the first checkpoint
    (host.folders.checkpoints / "db.safetensors").write_bytes(b"mine")
    job = make_job(root, concept={"num_class_images": 0, "class_folder": Path(), "class_prompt": ""})
    with pytest.raises(ConfigError, match="already exists; choose another name or tick overwrite"):
        run(job, host)
    assert (host.folders.checkpoints / "db.safetensors").read_bytes() == b"mine"
    with pytest.raises(ConfigError, match="is the model it trains from"):
        run(job.replace(name="liandan-tiny-sd1", overwrite=True), host)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(root: Path, monkeypatch) -> None:
    import safetensors.torch

    host = StandaloneHost(root / "data")
    plain = {"num_class_images": 0, "class_folder": Path(), "class_prompt": ""}
    run(make_job(root, concept=plain, train={"max_steps": 1}), host)
    path = host.folders.checkpoints / "db.safetensors"
    before = path.read_bytes()
    real_save = safetensors.torch.save_file

    def disk_full(state, filename, metadata=None):
        real_save(dict(list(state.items())[:3]), filename, metadata)  # part of the file, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    again = make_job(
        root, concept=plain, overwrite=True, train={"max_steps": 2, "resume": False}, log_dir=root / "l2"
    )
    with pytest.raises(
        DiskFullError, match=r"disk is full: .*db\.safetensors.*the previous file is unchanged"
    ):
        run(again, host)
    assert path.read_bytes() == before
    assert not [p for p in host.folders.checkpoints.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_the_example_job_file_runs_from_the_cli(tmp_path: Path) -> None:
    """Copied beside its pictures into a temporary folder, so its class images are not made in the repo."""
    from liandan import cli
    from liandan.jobs import load_job_file

    example = Path(__file__).resolve().parents[1] / "examples" / "dreambooth_tiny.toml"
    shutil.copy(example, tmp_path / example.name)
    shutil.copytree(EXAMPLE_IMAGES, tmp_path / "images")
    job = load_job_file(tmp_path / example.name)
    assert isinstance(job, DreamBoothJob) and job.concepts[0].has_class_images
    assert cli.main(["train", str(tmp_path / example.name), "--data-dir", str(tmp_path / "data")]) == 0
    saved = tmp_path / "data" / "models" / "Stable-diffusion" / "tiny_dreambooth.safetensors"
    assert read_metadata(saved)["liandan.trained"] == "unet,text_encoder"
    assert tensors(saved)["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert len(list((tmp_path / "class_images").glob("*.png"))) == job.concepts[0].num_class_images
