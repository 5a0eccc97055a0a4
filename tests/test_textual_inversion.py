"""Textual inversion end to end on the tiny models: creation, a real run through the runner on the A1111
fixtures' train64, the files A1111 and diffusers load, resume, interrupt, SDXL and SD2, and bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from a1111_safe_unpickler import check_pt

from liandan.errors import ConfigError, DatasetError, FormatError, LiandanError
from liandan.formats.embedding import (
    Embedding,
    load_embedding,
    save_embedding_pt,
    save_embedding_safetensors,
)
from liandan.host.standalone import StandaloneHost
from liandan.job_runner import run_job
from liandan.jobs import DataSpec, PreviewSpec, TextualInversionJob, TrainSpec
from liandan.models.embedding_vectors import new_embedding
from liandan.models.tiny import tiny_bundle
from liandan.progress import Control, Reporter

TINY_HASH_LEN = 10


def make_job(folder: Path, name: str = "testti", **changes) -> TextualInversionJob:
    train = {"learn_rate": "0.005", "max_steps": 4, "save_every": 2, "preview_every": 2, "seed": 0}
    train.update(changes.pop("train", {}))
    preview = {"steps": 2, "width": 64, "height": 64, "seed": 1, "self_test": True}
    preview.update(changes.pop("preview", {}))
    data = {"folder": folder, "width": 64, "height": 64}
    data.update(changes.pop("data", {}))
    return TextualInversionJob(
        name=name,
        init_text="a photo",
        vectors=3,
        train=TrainSpec(**train),
        data=DataSpec(**data),
        preview=PreviewSpec(**preview),
        **changes,
    )


def run(job: TextualInversionJob, host: StandaloneHost, control: Control | None = None, on_event=None):
    events = []

    def record(event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    result = run_job(job, host, Reporter(record), control or Control())
    return result, events


# --- training on the fixtures -------------------------------------------------------------------------


@pytest.mark.slow
def test_training_writes_what_a1111_loads(train64: Path, tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    job = make_job(train64, train={"max_steps": 8, "save_every": 4, "preview_every": 4})
    result, events = run(job, host)
    assert result.step == 8 and result.stopped_reason == "max_steps"

    final = host.folders.embeddings / "testti.pt"
    check_pt(final)  # A1111's safe unpickler accepts it
    loaded = load_embedding(final)
    created = new_embedding(tiny_bundle("sd1"), "testti", "a photo", 3)
    assert loaded.name == "testti" and loaded.step == 8
    assert loaded.sd_checkpoint is not None and len(loaded.sd_checkpoint) == TINY_HASH_LEN
    assert loaded.sd_checkpoint_name == "liandan-tiny-sd1"
    assert not torch.equal(loaded.single, created.single)  # it trained

    run_dir = next(host.folders.logs.glob("*/testti"))
    for step in (4, 8):
        copy = run_dir / "embeddings" / f"testti-{step}.pt"
        check_pt(copy)
        check_pt(Path(f"{copy}.optim"))
        assert load_embedding(copy).step == step
        card = load_embedding(run_dir / "image_embeddings" / f"testti-{step}.png")
        assert card.name == f"testti-{step}" and card.step == step
        assert (run_dir / "images" / f"testti-{step}.png").is_file()
        assert (run_dir / "images" / f"testti-{step}-selftest.png").is_file()
    assert torch.equal(card.single, loaded.single)

    with open(run_dir / "textual_inversion_loss.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "epoch", "epoch_step", "loss", "learn_rate"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 9))
    assert all(float(r[4]) == 0.005 for r in rows[1:])
    # the self-test found the embedding changes a fixed-seed image
    assert not any("did not change" in (e.message or "") for e in events)

    from liandan.models.sampling import generate

    bundle = tiny_bundle("sd1")
    bundle_prompt = "a painting, art by testti"
    kwargs = {"steps": 2, "cfg_scale": 7.0, "seed": 3, "width": 64, "height": 64}
    plain = generate(bundle, bundle_prompt, **kwargs)
    with_embedding = generate(bundle, bundle_prompt, embeddings={"testti": loaded.single}, **kwargs)
    assert plain.tobytes() != with_embedding.tobytes()


@pytest.mark.slow
def test_training_further_continues_from_the_saved_step_and_optimizer_state(
    train64: Path, tmp_path: Path
) -> None:
    host = StandaloneHost(tmp_path / "data")
    first = make_job(train64, train={"max_steps": 3, "save_every": 0, "resume": False},
                     preview={"self_test": False}, save_png_cards=False)  # fmt: skip
    run(first, host)
    final = host.folders.embeddings / "testti.pt"
    assert load_embedding(final).step == 3 and Path(f"{final}.optim").is_file()

    again = first.replace(train=first.train.replace(max_steps=5), log_dir=tmp_path / "logs2")
    result, events = run(again, host)
    assert (result.start_step, result.step) == (3, 5)
    assert any("continuing with the optimizer state" in (e.message or "") for e in events)
    assert load_embedding(final).step == 5

    done, _ = run(again, host)  # A1111: already at max steps, returns at once
    assert done.stopped_reason == "already_done" and load_embedding(final).step == 5


@pytest.mark.slow
def test_interrupt_saves_and_the_same_job_resumes(train64: Path, tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    control = Control()
    job = make_job(train64, train={"max_steps": 6, "save_every": 0, "preview_every": 0},
                   preview={"self_test": False}, save_png_cards=False)  # fmt: skip

    def stop_at_two(event) -> None:
        if event.kind == "step" and event.step == 2:
            control.interrupt()

    result, _ = run(job, host, control, stop_at_two)
    assert result.stopped_reason == "interrupted" and result.step == 2
    assert load_embedding(host.folders.embeddings / "testti.pt").step == 2
    resumed, events = run(job, host)
    assert (resumed.start_step, resumed.step) == (2, 6)
    assert any(e.message == "resumed at step 2" for e in events)


@pytest.mark.slow
def test_a_full_disk_stops_the_job_with_its_state_kept_and_a_rerun_finishes(
    train64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills at the step-4 save: the job stops with the disk-full message, the step-2 embedding and
    run state stay whole, and once space is free the same job resumes and ends as an uninterrupted run."""
    import errno

    from liandan import atomic_files
    from liandan.errors import DiskFullError

    host = StandaloneHost(tmp_path / "data")
    job = make_job(train64, train={"max_steps": 6, "save_every": 2, "preview_every": 0},
                   preview={"self_test": False}, save_png_cards=False)  # fmt: skip
    full = {"on": False}
    real_temporary = atomic_files._create_temporary

    def filling(target: Path) -> Path:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_temporary(target)

    def fill_at_four(event) -> None:
        if event.kind == "step" and event.step == 4:
            full["on"] = True

    monkeypatch.setattr(atomic_files, "_create_temporary", filling)
    with pytest.raises(DiskFullError, match="disk is full"):
        run(job, host, on_event=fill_at_four)
    (run_dir,) = (tmp_path / "data" / "textual_inversion").glob("*/testti")
    step_two = load_embedding(run_dir / "embeddings" / "testti-2.pt")
    assert step_two.step == 2

    full["on"] = False  # space freed
    resumed, _ = run(job, host)
    assert (resumed.start_step, resumed.step) == (2, 6)
    reference_host = StandaloneHost(tmp_path / "reference")
    run(job, reference_host)
    final = load_embedding(host.folders.embeddings / "testti.pt").vectors
    expected = load_embedding(reference_host.folders.embeddings / "testti.pt").vectors
    assert all(torch.equal(final[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_sdxl_trains_a_pair(train64: Path, tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    host.current_checkpoint()  # writes the tiny models
    job = make_job(train64, model="liandan-tiny-sdxl", train={"max_steps": 2, "save_every": 0},
                   preview={"self_test": False})  # fmt: skip
    result, _ = run(job, host)
    assert result.step == 2
    saved = load_embedding(host.folders.embeddings / "testti.safetensors")  # A1111 .pt holds one tensor
    assert saved.is_sdxl and saved.widths == [64, 128] and saved.step == 2
    assert saved.sd_checkpoint_name == "liandan-tiny-sdxl"


@pytest.mark.slow
def test_sd2_v_prediction_trains(train64: Path, tmp_path: Path) -> None:
    from liandan.models.saving import save_checkpoint

    host = StandaloneHost(tmp_path / "data")
    checkpoint = save_checkpoint(tiny_bundle("sd2"), host.folders.checkpoints / "tiny-sd2.safetensors")
    job = make_job(train64, model=str(checkpoint), file_format="safetensors",
                   train={"max_steps": 2, "save_every": 0}, preview={"self_test": False})  # fmt: skip
    result, _ = run(job, host)
    assert result.step == 2 and result.last_loss is not None
    saved = load_embedding(host.folders.embeddings / "testti.safetensors")
    assert saved.widths == [64] and saved.step == 2 and saved.sd_checkpoint_name == "tiny-sd2"


@pytest.mark.slow
def test_diffusers_load_textual_inversion_reads_our_file(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    bundle = tiny_bundle("sd1")
    vectors = torch.randn(3, 32)
    path = save_embedding_pt(Embedding("ourti", {"*": vectors}, step=5), tmp_path / "ourti.pt")
    pipe = StableDiffusionPipeline(
        vae=bundle.vae,
        text_encoder=bundle.text_encoders[0],
        tokenizer=bundle.tokenizers[0],
        unet=bundle.unet,
        scheduler=DDIMScheduler.from_config(bundle.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    other = save_embedding_safetensors(Embedding("ourst", {"*": vectors}), tmp_path / "ourst.safetensors")
    for file in (path, other):
        token = file.stem
        pipe.load_textual_inversion(str(file), token=token)
        ids = pipe.tokenizer.convert_tokens_to_ids([token, f"{token}_1", f"{token}_2"])
        table = pipe.text_encoder.get_input_embeddings().weight.detach()
        assert torch.allclose(table[ids], vectors)


# --- bad input ------------------------------------------------------------------------------------------


def test_empty_folder_is_a_dataset_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    host = StandaloneHost(tmp_path / "data")
    with pytest.raises(DatasetError, match="no usable image"):
        run(make_job(empty), host)
    with pytest.raises(DatasetError, match="does not exist"):
        run(make_job(tmp_path / "missing"), host)


@pytest.mark.slow
def test_broken_files_are_skipped_and_listed(train64: Path, tmp_path: Path) -> None:
    train64 = shutil.copytree(train64, tmp_path / "with_broken_files")
    good = (train64 / "img0.png").read_bytes()
    (train64 / "truncated.png").write_bytes(good[: len(good) // 2])
    (train64 / "fake.png").write_text("not an image")
    host = StandaloneHost(tmp_path / "data")
    job = make_job(train64, train={"max_steps": 1, "save_every": 0}, preview={"self_test": False},
                   save_png_cards=False)  # fmt: skip
    result, events = run(job, host)
    assert result.step == 1
    warnings = " ".join(
        e.message for e in events if e.kind == "message" and e.extra.get("level") == "warning"
    )
    assert "truncated.png" in warnings and "fake.png" in warnings


@pytest.mark.parametrize("schedule", ["0.1:abc", "0.1:500, 0.2:100", "", "abc"])
def test_malformed_schedules_are_refused_when_the_job_is_made(schedule: str, tmp_path: Path) -> None:
    """No runner ever receives such a job: the spec cannot be built (so nothing can load a model)."""
    with pytest.raises(ConfigError, match="schedule"):
        make_job(tmp_path, train={"learn_rate": schedule})


def test_an_embedding_of_another_family_is_refused(train64: Path, tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    pair = Embedding("pairti", {"clip_l": torch.zeros(1, 64), "clip_g": torch.zeros(1, 128)})
    save_embedding_safetensors(pair, host.folders.embeddings / "pairti.safetensors")
    with pytest.raises(FormatError, match="another model family"):
        run(make_job(train64, name="pairti"), host)
    # a vector of SD1 width on the SD2 model
    from liandan.models.saving import save_checkpoint

    sd2 = save_checkpoint(tiny_bundle("sd2"), host.folders.checkpoints / "tiny-sd2.safetensors")
    save_embedding_pt(Embedding("wide", {"*": torch.zeros(2, 32)}), host.folders.embeddings / "wide.pt")
    with pytest.raises(FormatError, match="another model family"):
        run(make_job(train64, name="wide", model=str(sd2)), host)


def test_a_pickled_payload_is_refused_and_never_run(train64: Path, tmp_path: Path) -> None:
    import os

    host = StandaloneHost(tmp_path / "data")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"string_to_param": {"*": Payload()}}, host.folders.embeddings / "evil.pt")
    with pytest.raises(FormatError, match="refused"):
        run(make_job(train64, name="evil"), host)
    assert not marker.exists()


def test_template_without_name_is_refused(train64: Path, tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    (host.folders.templates / "plain.txt").write_text("a picture of [filewords]\n")
    with pytest.raises(LiandanError, match=r"\[name\]"):
        run(make_job(train64, data={"template": "plain.txt"}), host)


def test_only_the_main_process_writes_a_new_embedding(tmp_path: Path) -> None:
    """Under several processes every rank builds the method; one file write, by rank 0."""
    from liandan.methods.textual_inversion import prepare_embedding
    from liandan.train.training_job import MethodContext

    host = StandaloneHost(tmp_path / "data")
    job = make_job(tmp_path)
    bundle = tiny_bundle("sd1")

    def context(is_main: bool) -> MethodContext:
        return MethodContext(job, host, None, bundle, None, tmp_path / "run", torch.device("cpu"), is_main)  # type: ignore[arg-type]

    embedding, path = prepare_embedding(context(is_main=False))
    assert not path.exists() and embedding.single.shape[0] == 3
    _, main_path = prepare_embedding(context(is_main=True))
    assert main_path == path and torch.equal(load_embedding(path).single, embedding.single)


def test_gradient_checkpointing_reaches_the_frozen_unet(
    train64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedding itself has nothing to checkpoint: the switch must act on the UNet it trains through."""
    import torch.utils.checkpoint

    real_checkpoint, calls = torch.utils.checkpoint.checkpoint, []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    job = make_job(train64, train={"max_steps": 1, "save_every": 0, "preview_every": 0,
                                   "gradient_checkpointing": True},
                   preview={"self_test": False}, save_png_cards=False)  # fmt: skip
    result, _ = run(job, StandaloneHost(tmp_path / "data"))
    assert result.step == 1 and calls


def test_loss_summary_compares_tenths_of_a_run_and_does_not_pretend_for_a_short_one() -> None:
    from liandan.train.training_job import loss_summary

    long = loss_summary(Path("cat.pt"), [2.0] * 10 + [1.0] * 80 + [0.5] * 10)
    assert long == "saved cat.pt: loss 2.0000 -> 0.5000 (mean of the first/last 10 steps)"
    assert loss_summary(Path("cat.pt"), [0.9, 0.8]) == "saved cat.pt: 2 step(s), last loss 0.8000"


def test_continuing_a_png_card_leaves_one_file_of_its_name_and_keeps_its_vector_count(
    train64: Path, tmp_path: Path
) -> None:
    """A1111 loads either of two files of one name: the card becomes cardti.pt, the original is moved into
    the run folder, and both changes are said; the card's 3 vectors win over the job's 1, out loud."""
    from PIL import Image

    from liandan.formats.embedding import save_embedding_card

    host = StandaloneHost(tmp_path / "data")
    card = Embedding("cardti", {"*": torch.randn(3, 32)}, step=5)
    save_embedding_card(
        card, Image.new("RGB", (64, 64), "grey"), host.folders.embeddings / "cardti.png", "m", ""
    )
    job = make_job(train64, name="cardti", train={"max_steps": 7, "save_every": 0}, save_png_cards=False)
    job = job.replace(vectors=1, preview=job.preview.replace(self_test=False))
    _, events = run(job, host)

    same_name = sorted(p.name for p in host.folders.embeddings.iterdir() if p.stem == "cardti")
    assert same_name == ["cardti.pt"]  # (its .optim sidecar is "cardti.pt.optim": another stem)
    trained = load_embedding(host.folders.embeddings / "cardti.pt")
    assert trained.single.shape == (3, 32) and trained.step == 7
    (moved,) = host.folders.logs.rglob("replaced/cardti.png")
    assert load_embedding(moved).step == 5
    messages = " | ".join(e.message for e in events if e.kind == "message")
    assert "with its own 3 vector(s) per token; vectors = 1 applies to a new embedding" in messages
    assert f"the original was moved to {moved}" in messages
