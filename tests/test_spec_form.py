from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest

from liandan.errors import ConfigError
from liandan.jobs import HypernetworkJob, TextualInversionJob
from liandan.preprocess.job import PreprocessJob
from liandan.ui.spec_form import SpecForm


def _values(choices: list) -> list:
    """Choice values: Gradio keeps some as (label, value) pairs, some as plain values."""
    return [c[1] if isinstance(c, tuple) else c for c in choices]


def test_controls_take_the_spec_defaults_and_elem_ids_from_the_path() -> None:
    form = SpecForm(HypernetworkJob, "p")
    with gr.Blocks():
        rate = form.text("train.learn_rate", "Learning rate", "1e-5")
        steps = form.number("train.max_steps", "Max steps", precision=0)
        log_dir = form.text("log_dir", "Log directory")
        folder = form.text("data.folder", "Dataset directory")
        optimizer = form.radio("train.optimizer", "Optimizer")
        init = form.dropdown("weight_init", "Init")
        activation = form.dropdown("activation", "Activation", ["linear", "relu"])
        flip = form.slider("data.flip", "Flip", 0, 1, 0.05)
        norm = form.check("layer_norm", "Layer norm")
        sizes = form.add("sizes", gr.CheckboxGroup(["768", "320"], value=[], elem_id=form.elem_id("sizes")))
    assert rate.value == "0.000005"  # the hypernetwork job's own section default, not TrainSpec's
    assert (rate.elem_id, rate.label, rate.placeholder) == ("p_train_learn_rate", "Learning rate", "1e-5")
    assert steps.value == 1000 and steps.precision == 0 and steps.elem_id == "p_train_max_steps"
    assert log_dir.value == ""  # None shows as an empty box
    assert folder.value == ""  # so does a folder not chosen yet (Path()), never "."
    assert _values(optimizer.choices) == form.choices("train.optimizer") and optimizer.value == "AdamW"
    assert "Lion" in form.choices("train.optimizer")
    assert _values(init.choices) == form.choices("weight_init") and init.value == "Normal"
    assert _values(activation.choices) == ["linear", "relu"] and activation.value == "linear"
    assert flip.value == 0.0 and flip.maximum == 1 and norm.value is False
    assert sizes.elem_id == "p_sizes"
    built = ["train.learn_rate", "train.max_steps", "log_dir", "data.folder", "train.optimizer",
             "weight_init", "activation", "data.flip", "layer_norm", "sizes"]  # fmt: skip
    assert list(form.controls) == built
    assert form.controls["sizes"] is sizes


def test_submitted_values_become_a_validated_spec() -> None:
    form = SpecForm(HypernetworkJob, "p")
    job = form.to_spec({"name": "hn", "sizes": ["768", "320"], "train.max_steps": 7.0, "log_dir": "",
                        "data.folder": "pics", "data.flip": 1, "preview.cfg_scale": 5})  # fmt: skip
    assert isinstance(job, HypernetworkJob)
    assert job.sizes == (768, 320) and job.train.max_steps == 7 and isinstance(job.train.max_steps, int)
    assert job.log_dir is None and job.data.folder == Path("pics")
    assert job.data.flip == 1.0 and job.preview.cfg_scale == 5.0
    assert job.train.learn_rate == "0.000005" and job.data.template == "liandan_hypernetwork.txt"

    ti = SpecForm(TextualInversionJob, "t").to_spec({"name": "cat", "vectors": 3.0, "train.max_steps": 2})
    assert ti.vectors == 3 and ti.train.learn_rate == "0.005"
    pre = SpecForm(PreprocessJob, "q").to_spec(
        {"width": 64.0, "deepdanbooru_project": "", "captioners": ["blip"]}
    )
    assert pre.width == 64 and pre.deepdanbooru_project is None and pre.captioners == ("blip",)


def test_bad_values_and_unknown_paths_are_config_errors() -> None:
    form = SpecForm(TextualInversionJob, "t")
    with pytest.raises(ConfigError, match=re.escape("train.max_steps = 'many': expected a number")):
        form.to_spec({"train.max_steps": "many"})
    with pytest.raises(ConfigError, match="vectors = 76 is out of range"):
        form.to_spec({"vectors": 76})
    with pytest.raises(ConfigError, match="expected one of"):
        form.to_spec({"preview.sampler": "plms"})
    with pytest.raises(ConfigError, match=re.escape("TextualInversionJob has no setting 'train.speed'")):
        form.to_spec({"train.speed": 1})
    with pytest.raises(ConfigError, match=re.escape("has no setting 'name.first'")):
        form.default("name.first")
    with pytest.raises(ConfigError, match="has no setting 'colour'"), gr.Blocks():
        form.add("colour", gr.Textbox())
    with pytest.raises(ConfigError, match="sizes = \\['big'\\]: expected numbers"):
        SpecForm(HypernetworkJob, "p").to_spec({"sizes": ["big"]})


def test_auto_picks_the_control_the_type_calls_for_and_keys_it_apart_from_other_tabs() -> None:
    form = SpecForm(TextualInversionJob, "t")
    with gr.Blocks():
        sampler = form.auto("preview.sampler", "Sampler")
        buckets = form.auto("data.buckets", "Buckets")
        dropout = form.auto("data.tag_dropout", "Tag dropout")
        steps = form.auto("train.max_steps", "Steps")
        rate = form.auto("train.learn_rate", "Rate")
        other = SpecForm(HypernetworkJob, "h").auto("train.learn_rate", "Rate")
    assert isinstance(sampler, gr.Dropdown) and _values(sampler.choices) == form.choices("preview.sampler")
    assert isinstance(buckets, gr.Checkbox) and isinstance(dropout, gr.Slider) and dropout.maximum == 1
    assert isinstance(steps, gr.Number) and steps.precision == 0 and isinstance(rate, gr.Textbox)
    # A1111's ui-config.json keys saved defaults by tab and label: the prefix keeps two tabs' "Rate" apart
    assert (rate.custom_script_source, other.custom_script_source) == ("t", "h")
    assert rate.value == "0.005" and other.value == "0.000005"


def test_leaf_paths_reach_into_every_section() -> None:
    paths = SpecForm(TextualInversionJob, "t").leaf_paths()
    assert {"name", "model", "clip_skip", "train.learn_rate", "data.folder", "preview.self_test"} <= set(
        paths
    )
    assert "train" not in paths and len(paths) == len(set(paths))
