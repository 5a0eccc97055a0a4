"""The DreamBooth tab: the concepts editor (ui/concepts.py), DreamBooth's own settings, the shared
training / dataset / preview sections, Train, Export job file, Plan memory, the Convert section (single
file <-> diffusers folder) and the shared job panel (progress, loss, previews, Interrupt, Resume), every
control keyed by DreamBoothJob's field paths."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.jobs import DreamBoothJob, job_to_dict
from liandan.ui.components import UIContext, job_model, job_panel, model_dropdown, model_dropdown_choices
from liandan.ui.concepts import concepts_controls, parse_concepts
from liandan.ui.sections import (
    MORE_DATA,
    plan_button,
    plan_message,
    plan_message_box,
    training_sections,
    with_more_data,
)
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_db"
LABELS = {
    "data.folder": "Dataset directory (only without concepts: a plain fine-tune)",
    "data.template": "Prompt template (only without concepts)",
    "data.prompt": "Prompt instead of the template (only without concepts)",
    "data.repeats": "Repeats per epoch (only without concepts)",
    "data.weight": "Loss weight (only without concepts)",
    "train.learn_rate": "UNet learning rate (2e-6; A1111 schedule syntax with schedule 'a1111')",
}


def _message(text: str) -> str:
    return f'<p class="liandan-message">{html.escape(text)}</p>'


def _error(e: Exception) -> str:
    return f'<p class="liandan-error">{html.escape(str(e))}</p>'


def job_from_form(values: dict[str, Any]) -> DreamBoothJob:
    """Widget values by field path (the concepts as table rows) -> a validated job."""
    return SpecForm(DreamBoothJob, PREFIX).to_spec(parse_concepts(values))


def _dreambooth_controls(f: SpecForm[Any]) -> None:
    with gr.Accordion("DreamBooth", open=True):
        with gr.Row():
            f.text("name", "Checkpoint name (written to models/Stable-diffusion/<name>.<format>)")
            f.auto("save_format", "Save as")
            f.auto("save_dtype", "Saved precision")
            f.check("overwrite", "Overwrite an existing checkpoint of that name")
        with gr.Row():
            f.check("train_text_encoder", "Train the text encoder(s)")
            f.auto("text_encoder_lr_scale", "Text encoder learning rate (× the UNet's)")
            f.auto("text_encoder_stop_step", "Stop training the text encoder at step (0: never)")
            f.text("vae", "VAE file or name in models/VAE (empty: the model's)")


def _convert_section(ctx: UIContext) -> None:
    with gr.Accordion("Convert (single-file checkpoint <-> diffusers folder)", open=False):
        with gr.Row():
            source = gr.Textbox("", label="From (a .safetensors/.ckpt file or a diffusers folder)",
                                elem_id=f"{PREFIX}_convert_source")  # fmt: skip
            target = gr.Textbox("", label="To (a .safetensors/.ckpt file or a new folder)",
                                elem_id=f"{PREFIX}_convert_target")  # fmt: skip
            dtype = gr.Dropdown(["as is", "fp16", "bf16", "fp32"], value="as is", label="Precision",
                                elem_id=f"{PREFIX}_convert_dtype")  # fmt: skip
            button = gr.Button("Convert", elem_id=f"{PREFIX}_convert", scale=0, min_width=120)
        message = gr.HTML("", elem_id=f"{PREFIX}_convert_message")

    def on_convert(source_path: str, target_path: str, precision: str) -> str:
        from liandan.models.convert import convert

        try:
            written = convert(Path(source_path).expanduser(), Path(target_path).expanduser(),
                              None if precision == "as is" else precision)  # fmt: skip
        except LiandanError as e:
            return _error(e)
        ctx.on_checkpoints_changed()
        return _message(f"Wrote {written}.")

    button.click(on_convert, [source, target, dtype], message, queue=False)


def build(ctx: UIContext) -> None:
    with gr.Row():
        model = model_dropdown(ctx, PREFIX)
        # a trained checkpoint joins the list (inside A1111 its own top-left dropdown lists it)
        refresh = gr.Button("Refresh", elem_id=f"{PREFIX}_refresh", scale=0, min_width=120)
    form = SpecForm(DreamBoothJob, PREFIX)
    concepts_controls(form)
    _dreambooth_controls(form)
    training_sections(form, ctx, LABELS)
    with gr.Row():
        start = gr.Button("Train", variant="primary", elem_id=f"{PREFIX}_train")
        export = gr.Button("Export job file", elem_id=f"{PREFIX}_export_job")
        plan = plan_button(PREFIX)
    message = gr.HTML("", elem_id=f"{PREFIX}_train_message")
    plan_box = plan_message_box(PREFIX)
    _convert_section(ctx)
    job_panel(ctx, DreamBoothJob.kind, PREFIX)
    paths = list(form.controls)

    def job_of(model_title: str, values: tuple[Any, ...]) -> DreamBoothJob:
        form_values = dict(zip(paths, values))
        more = [form_values.pop(path) for path in MORE_DATA]
        form_values["model"] = job_model(model_title)
        return with_more_data(job_from_form(form_values), *more)

    def on_train(model_title: str, *values: Any) -> str:
        try:
            job = job_of(model_title, values)
        except LiandanError as e:
            return _error(e)
        return _message(f"Started {ctx.runner.submit(job)}.")

    def on_export(model_title: str, *values: Any) -> str:
        """The job as a JSON job file in the log folder (`python -m liandan train <file>` runs it)."""
        from liandan.atomic_files import write_text_atomic

        try:
            job = job_of(model_title, values)
        except LiandanError as e:
            return _error(e)
        path = ctx.host.folders.logs / "jobs" / f"{job.name}.json"
        write_text_atomic(path, json.dumps(job_to_dict(job), indent=2) + "\n")
        return _message(f"Wrote {path}; run it with: python -m liandan train {path}")

    def on_refresh() -> Any:
        return gr.update(choices=model_dropdown_choices(ctx))

    refresh.click(on_refresh, None, model, queue=False)
    inputs = [model, *(form.controls[p] for p in paths)]
    start.click(on_train, inputs, message, queue=False)
    export.click(on_export, inputs, message, queue=False)
    plan.click(lambda title, *values: plan_message(ctx, lambda: job_of(title, values)), inputs, plan_box)
