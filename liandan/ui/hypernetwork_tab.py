"""The "Hypernetwork" tab: Create hypernetwork (A1111's options), Train, and the shared job panel, laid out
by `ui/sections.py` from HypernetworkJob's fields. The module sizes offered are the attention widths of the
model chosen in the Model dropdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.jobs import HypernetworkJob
from liandan.models.hypernetwork_modules import WEIGHT_INITS, activation_classes
from liandan.ui.components import UIContext, job_model
from liandan.ui.sections import TrainingTab, build_training_tab
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_hn"
# what real checkpoints have (SD1 768, SD2 1024, SDXL 2048 contexts; 320/640/1280 channels): offered when the
# model's own widths cannot be read without loading it (a .ckpt, no model)
KNOWN_SIZES = [768, 1024, 2048, 320, 640, 1280]


def job_from_form(values: dict[str, Any]) -> HypernetworkJob:
    """Widget values keyed by field ("train.max_steps") -> a validated HypernetworkJob."""
    return SpecForm(HypernetworkJob, PREFIX).to_spec(values)


def hypernetwork_names(ctx: UIContext) -> list[str]:
    return sorted(p.stem for p in ctx.host.folders.hypernetworks.glob("*.pt"))


def size_choices(ctx: UIContext, model_title: str | None) -> list[str]:
    """The attention widths of the model a job would train on, read from its file's header."""
    from liandan.models.detect import attention_widths
    from liandan.models.loading import open_checkpoint

    try:
        path = Path(ctx.host.resolve_checkpoint(job_model(model_title)).path)
        if path.suffix != ".safetensors":  # a pickle would have to be loaded whole to see its shapes
            return [str(s) for s in KNOWN_SIZES]
        with open_checkpoint(path) as source:
            widths = attention_widths(source.shapes)
    except LiandanError:  # no checkpoint yet, or an unreadable one: training will say so
        return [str(s) for s in KNOWN_SIZES]
    return [str(w) for w in widths] or [str(s) for s in KNOWN_SIZES]


def _create_controls(ctx: UIContext) -> Any:
    def controls(f: SpecForm[Any]) -> None:
        f.text("name", "Name")
        label = "Modules (none ticked: every attention width of the model)"
        f.add(
            "sizes",
            gr.CheckboxGroup(size_choices(ctx, None), value=[], label=label, elem_id=f.elem_id("sizes")),
        )
        with gr.Row():
            f.text("layer_structure", "Hypernetwork layer structure", "1, 2, 1")
            f.dropdown("activation", "Activation function", sorted(activation_classes()))
            f.dropdown("weight_init", "Layer weight initialization", list(WEIGHT_INITS))
        with gr.Row():
            f.check("layer_norm", "Add layer normalization")
            f.check("use_dropout", "Use dropout")
            f.text("dropout_structure", "Dropout structure", "0, 0.3, 0 (empty: A1111's default)")
            f.check("last_layer_dropout", "Last layer dropout")
            f.check("activate_output", "Activate output")
            f.check("overwrite", "Overwrite old hypernetwork")

    return controls


def _create(host: Any, job: HypernetworkJob) -> Path:
    from liandan.methods.hypernetwork import create_hypernetwork

    return create_hypernetwork(host, job)


def build(ctx: UIContext) -> None:
    tab = TrainingTab(
        prefix=PREFIX,
        spec=HypernetworkJob,
        noun="hypernetwork",
        create_controls=_create_controls(ctx),
        create=_create,
        names=hypernetwork_names,
    )
    built = build_training_tab(ctx, tab)
    sizes = built.create_form.controls["sizes"]

    def follow_model(title: str) -> Any:
        return gr.update(choices=size_choices(ctx, title), value=[])

    # inside A1111 the model is chosen top left, which this tab does not see change: Refresh reads it again
    built.model.change(follow_model, built.model, sizes, queue=False)
    built.refresh.click(follow_model, built.model, sizes, queue=False)
