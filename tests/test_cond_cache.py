"""The frozen-text-encoder cond cache: the prompts a run can ask for are listed before training when they are
few (template lines x captions), so no step waits for a text encoder, and a hypernetwork job with the default
ten-line template encodes each of its prompts once, all before its first step."""

from __future__ import annotations

from pathlib import Path

import pytest

from liandan.data.dataset import DatasetMix, TrainingDataset
from liandan.host.standalone import StandaloneHost
from liandan.jobs import DataSpec, HypernetworkJob, PreviewSpec, TrainSpec
from liandan.methods.hypernetwork import run_hypernetwork_job
from liandan.models.conditioning import PromptEncoder
from liandan.models.tiny import tiny_bundle
from liandan.progress import Control, Reporter
from liandan.train import cond_cache
from liandan.train.cond_cache import every_prompt

TEMPLATE = "liandan_hypernetwork.txt"  # ten lines, [filewords] in them


def _dataset(train64: Path, **data) -> TrainingDataset:
    spec = DataSpec(folder=train64, width=64, height=64, template=data.pop("template", TEMPLATE), **data)
    return TrainingDataset(spec, name="hn", vae=tiny_bundle("sd1").vae)


def test_every_prompt_is_each_caption_in_each_line_and_all_that_the_epochs_draw(train64) -> None:
    dataset = _dataset(train64)
    lines = dataset.template.lines
    listed = every_prompt(dataset)
    assert listed == {
        line.replace("[filewords]", image.caption).replace("[name]", "hn")
        for image in dataset.images
        for line in lines
    }
    drawn = {dataset.prompt(index, epoch) for epoch in range(300) for index in range(len(dataset))}
    assert drawn == listed
    other = _dataset(train64, template="liandan_style.txt")
    assert every_prompt(DatasetMix([dataset, other])) == listed | every_prompt(other)


@pytest.mark.parametrize("data", [{"shuffle_tags": True}, {"tag_dropout": 0.1}])
def test_shuffled_or_dropped_tags_make_prompts_that_cannot_be_listed(train64, data) -> None:
    assert every_prompt(_dataset(train64, **data)) is None


def test_more_prompts_than_are_encoded_ahead_are_not_listed(train64, monkeypatch) -> None:
    dataset = _dataset(train64)
    monkeypatch.setattr(cond_cache, "MAX_PRECOMPUTED_CONDS", len(every_prompt(dataset)) - 1)
    assert every_prompt(dataset) is None


def test_a_hypernetwork_job_encodes_each_prompt_once_before_its_first_step(
    fixtures_dir, tmp_path, train64, monkeypatch
) -> None:
    timeline: list[tuple[str, str]] = []
    real_encode = PromptEncoder.encode

    def recorded_encode(self, prompts, *args, **kwargs):
        timeline.extend(("encode", prompt) for prompt in prompts)
        return real_encode(self, prompts, *args, **kwargs)

    monkeypatch.setattr(PromptEncoder, "encode", recorded_encode)
    host = StandaloneHost(tmp_path / "data", checkpoint=fixtures_dir / "model" / "tiny-sd1.safetensors")
    job = HypernetworkJob(
        name="hn",
        train=TrainSpec(learn_rate="0.0001", max_steps=12, save_every=0, preview_every=0),
        data=DataSpec(folder=train64, width=64, height=64, template=TEMPLATE),
        preview=PreviewSpec(steps=2, width=64, height=64, seed=3, self_test=False),
    )
    result = run_hypernetwork_job(job, host, Reporter(lambda e: timeline.append((e.kind, ""))), Control())
    assert result.step == 12
    first_step = timeline.index(("step", ""))
    encoded = [prompt for kind, prompt in timeline if kind == "encode"]
    assert all(kind != "encode" for kind, _ in timeline[first_step:])
    assert len(encoded) == len(set(encoded)) == len(every_prompt(_dataset(train64)))
