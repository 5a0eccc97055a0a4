"""The VRAM planner: the chooser on fake measurements, the dry run's scratch folders, the CPU answer, and a
real measurement where there is a GPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from data_helpers import gradient_image, save

from liandan.cli import main
from liandan.host.standalone import StandaloneHost
from liandan.jobs import (
    ConceptSpec,
    DataSpec,
    LoraJob,
    PreviewSpec,
    TextualInversionJob,
    TrainSpec,
    job_to_dict,
)
from liandan.train import planner
from liandan.train.planner import NO_GPU, SWITCHES, choose, plan_job

GIB = 2**30
# what each switch saves in the fake measurement, in GiB, of a 10 GiB job
SAVES = {
    "move_unused_to_cpu": 0.5,
    "latent_cache": 0.5,
    "fused_backward": 2.0,
    "8bit_optimizer": 1.5,
    "gradient_checkpointing": 3.0,
    "batch_size_1": 2.0,
}


def _job(folder: Path = Path("pictures"), **train) -> TextualInversionJob:
    settings = {"max_steps": 5, "move_unused_to_cpu": False, "optimizer": "AdamW", "batch_size": 4, **train}
    return TextualInversionJob(
        name="cat",
        train=TrainSpec(**settings),
        data=DataSpec(folder=folder, width=64, height=64, latent_cache="off"),
        preview=PreviewSpec(steps=2, width=64, height=64),
    )


def _fake_peak(job: TextualInversionJob, measured: list) -> float:
    t = job.train
    on = {
        "move_unused_to_cpu": t.move_unused_to_cpu,
        "latent_cache": job.data.latent_cache != "off",
        "fused_backward": t.fused_backward,
        "8bit_optimizer": t.optimizer == "AdamW8bit",
        "gradient_checkpointing": t.gradient_checkpointing,
        "batch_size_1": t.batch_size == 1,
    }
    measured.append(frozenset(name for name, is_on in on.items() if is_on))
    return (10 - sum(SAVES[name] for name, is_on in on.items() if is_on)) * GIB


def _plan(job: TextualInversionJob, budget_gib: float) -> tuple[planner.Plan, list]:
    measured: list = []
    return choose(job, lambda j: _fake_peak(j, measured), budget_gib * GIB), measured


def test_a_job_that_fits_is_measured_once_and_left_as_it_is() -> None:
    plan, measured = _plan(_job(), 12)
    assert plan.chosen == frozenset() and measured == [frozenset()]
    assert "the job fits as it is" in plan.message


def test_the_cheapest_fitting_set_keeps_the_needed_switches_and_drops_the_rest() -> None:
    # 6.4 GiB: switches 1-4 save 4.5 and fit; without 8-bit (3.0) nothing cheaper fits, so it stays; then
    # fused backward is needed (2.5 without), the latent cache is not (4.0), moving VAE/CLIP is (3.5).
    plan, measured = _plan(_job(), 10 - 3.6)
    assert plan.chosen == {"move_unused_to_cpu", "fused_backward", "8bit_optimizer"}
    assert len(measured) == len(set(measured)) <= 2 * len(SWITCHES)  # every set measured once
    assert plan.peaks[plan.chosen] == pytest.approx(6.0 * GIB)
    assert "turn on: move the VAE and text encoders to RAM; fused backward (step in backward); 8-bit" in (
        plan.message
    )


def test_an_expensive_switch_is_chosen_only_when_the_cheaper_ones_are_not_enough() -> None:
    plan, _ = _plan(_job(), 10 - 5.0)  # all four cheap ones save 4.5: checkpointing is needed
    assert "gradient_checkpointing" in plan.chosen
    assert plan.chosen == {"gradient_checkpointing", "fused_backward"}  # 5.0 exactly, cheapest such set


def test_switches_already_on_or_refused_are_not_measured() -> None:
    # accumulation 2 refuses fused backward; checkpointing and 8-bit are already on
    job = _job(gradient_accumulation=2, gradient_checkpointing=True, optimizer="AdamW8bit")
    plan, measured = _plan(job, 1)
    assert plan.chosen is None and "nothing fits" in plan.message
    assert not any("fused_backward" in m for m in measured)
    assert measured[-1] == {"move_unused_to_cpu", "latent_cache", "8bit_optimizer",
                            "gradient_checkpointing", "batch_size_1"}  # fmt: skip


def test_an_out_of_memory_dry_run_counts_as_not_fitting() -> None:
    def measure(job: TextualInversionJob) -> float:
        return math.inf if not job.train.gradient_checkpointing else GIB

    plan = choose(_job(), measure, 2 * GIB)
    assert plan.chosen == {"gradient_checkpointing"}
    assert "out of memory" in plan.message


def test_without_a_gpu_the_planner_says_it_cannot_measure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_job(_job(), StandaloneHost(tmp_path / "data")).message == NO_GPU
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job_to_dict(_job(tmp_path))), encoding="utf-8")
    assert main(["plan", str(job_file), "--data-dir", str(tmp_path / "data")]) == 0
    assert NO_GPU in capsys.readouterr().out


def _pictures(folder: Path) -> Path:
    for i in range(4):
        save(gradient_image((64, 64), seed=i), folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a cat", encoding="utf-8")
    return folder


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.mark.slow  # a real tiny textual-inversion job, about 10 s
def test_a_dry_run_stops_after_its_steps_and_writes_only_to_its_scratch_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU with the CUDA counters stubbed: what the planner does around the measurement."""
    host = StandaloneHost(tmp_path / "data")
    pictures = _pictures(tmp_path / "pictures")
    host.current_checkpoint()  # a fresh standalone data dir writes its tiny default model on first use
    before = _tree(tmp_path)
    reads: list[int] = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: reads.append(1) or 1234)
    assert planner.dry_run_peak(_job(pictures, max_steps=50, batch_size=1), host) == 1234
    assert len(reads) == 1  # read at step DRY_RUN_STEPS, which interrupts the job: not 50 steps
    assert _tree(tmp_path) == before  # no artifact, log, cache or state in the user's folders
    assert not list(Path(planner.tempfile.gettempdir()).glob("liandan-plan-*"))


@pytest.mark.slow  # a real tiny LoRA job
def test_a_dry_run_of_a_concept_job_generates_no_class_image(tmp_path: Path, monkeypatch) -> None:
    host = StandaloneHost(tmp_path / "data")
    pictures = _pictures(tmp_path / "pictures")
    classes = tmp_path / "dogs"
    concept = ConceptSpec(
        instance_folder=pictures,
        instance_prompt="a photo of sks dog",
        class_folder=classes,
        class_prompt="a photo of a dog",
        num_class_images=4,
    )
    job = LoraJob(name="plan", concepts=(concept,), data=DataSpec(width=64, height=64),
                  train=TrainSpec(max_steps=50), preview=PreviewSpec(width=64, height=64))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 1234)
    assert planner.dry_run_peak(job, host) == 1234
    assert not classes.exists() or not any(classes.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures GPU memory: needs a CUDA GPU")
def test_on_a_gpu_the_measured_peak_drives_the_plan(tmp_path: Path) -> None:
    host = StandaloneHost(tmp_path / "data")
    job = _job(_pictures(tmp_path / "pictures"), batch_size=2)
    roomy = plan_job(job, host, budget=64 * GIB)
    assert roomy.chosen == frozenset() and 0 < roomy.peaks[frozenset()] < 64 * GIB
    tight = plan_job(job, host, budget=roomy.peaks[frozenset()] - 1)
    assert tight.chosen, tight.message  # something had to be turned on, and what it chose fits
    assert tight.peaks[tight.chosen] < roomy.peaks[frozenset()]


def test_text_encoder_training_is_the_last_switch_and_only_for_jobs_that_have_it() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class WithTextEncoder(TextualInversionJob):
        train_text_encoder: bool = True

    assert SWITCHES[-1].name == "text_encoder_off"
    job = WithTextEncoder(name="cat", data=DataSpec(folder=Path("p")))
    changed, applied = planner.with_switches(job, frozenset({"text_encoder_off"}))
    assert applied == {"text_encoder_off"} and changed.train_text_encoder is False
    assert planner.with_switches(_job(), frozenset({"text_encoder_off"}))[1] == frozenset()
