"""The "Hypernetwork" tab: Create hypernetwork (A1111's options) and Train (a HypernetworkJob), with the
shared job panel (progress, loss plot, previews, Interrupt, Resume).

Every control is keyed by its HypernetworkJob field ("layer_structure", "train.learn_rate", "data.folder"),
so the form and the spec cannot drift apart; `job_from_form` turns the values into one validated job.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.jobs import HypernetworkJob
from liandan.methods.hypernetwork import check_options, create_hypernetwork
from liandan.models.hypernetwork_modules import WEIGHT_INITS, activation_classes
from liandan.ui.components import UIContext, check_train_schedules, job_model, job_panel, model_dropdown
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_hn"
# widths real checkpoints have (SD1 768, SD2 1024, SDXL 2048 contexts; 320/640/1280 channels); none ticked
# means every width the chosen model has, which also covers other models (the tiny ones)
SIZE_CHOICES = ["768", "1024", "2048", "320", "640", "1280"]


def _form() -> SpecForm[HypernetworkJob]:
    return SpecForm(HypernetworkJob, PREFIX)


def job_from_form(values: dict[str, Any]) -> HypernetworkJob:
    """Widget values keyed by field ("train.max_steps") -> a validated HypernetworkJob."""
    return _form().to_spec(values)


def hypernetwork_names(ctx: UIContext) -> list[str]:
    return sorted(p.stem for p in ctx.host.folders.hypernetworks.glob("*.pt"))


def _create_controls() -> dict[str, Any]:
    f = _form()
    f.text("name", "Name")
    sizes_label = "Modules (none ticked: every attention width of the model)"
    f.add("sizes", gr.CheckboxGroup(SIZE_CHOICES, value=[], label=sizes_label, elem_id=f.elem_id("sizes")))
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
    return f.controls


def _train_controls(ctx: UIContext) -> dict[str, Any]:
    f = _form()
    with gr.Row():
        f.text("data.folder", "Dataset directory", "/path/to/pictures")
        f.dropdown("data.template", "Prompt template", ctx.template_choices())
        f.text("log_dir", "Log directory (empty: default)")
    with gr.Row():
        f.text("train.learn_rate", "Learning rate (A1111 schedule syntax)")
        f.dropdown("train.lr_scheduler", "Schedule")
        f.dropdown("train.optimizer", "Optimizer")
    with gr.Row():
        f.number("train.batch_size", "Batch size", precision=0)
        f.number("train.gradient_accumulation", "Gradient accumulation", precision=0)
        f.number("train.max_steps", "Max steps", precision=0)
        f.number("train.early_stop_epochs", "Early stop after flat epochs (0 off)", precision=0)
    with gr.Row():
        f.number("data.width", "Width", precision=0)
        f.number("data.height", "Height", precision=0)
        f.check("data.buckets", "Aspect-ratio buckets")
        f.slider("data.flip", "Flip probability", 0, 1, 0.05)
    with gr.Row():
        f.check("data.shuffle_tags", "Shuffle tags")
        f.slider("data.tag_dropout", "Tag dropout", 0, 1, 0.05)
        f.dropdown("data.latent_sampling", "Latent sampling")
        f.check("data.use_alpha_weight", "Use PNG alpha as loss weight")
    with gr.Row():
        f.dropdown("train.clip_grad_mode", "Gradient clipping")
        f.text("train.clip_grad_value", "Clip value")
        f.number("train.save_every", "Save a copy every N steps (0: end only)", precision=0)
        f.number("train.preview_every", "Preview every N steps (0: off)", precision=0)
    with gr.Row():
        f.text("preview.prompt", "Preview prompt (empty: from the dataset)")
        f.number("preview.seed", "Preview seed (-1: random)", precision=0)
        f.number("preview.steps", "Preview steps", precision=0)
        f.number("preview.width", "Preview width", precision=0)
        f.number("preview.height", "Preview height", precision=0)
        f.check("train.move_unused_to_cpu", "Move VAE and CLIP to RAM")
    return f.controls


def _error(e: Exception) -> str:
    return f'<p class="liandan-error">{html.escape(str(e))}</p>'


def build(ctx: UIContext) -> None:
    model = model_dropdown(ctx, PREFIX)
    with gr.Accordion("Create hypernetwork", open=True):
        create_controls = _create_controls()
        create = gr.Button("Create hypernetwork", elem_id=f"{PREFIX}_create")
        create_message = gr.HTML("", elem_id=f"{PREFIX}_create_message")
    with gr.Accordion("Train", open=True):
        with gr.Row():
            trained = gr.Dropdown(
                hypernetwork_names(ctx),
                label="Hypernetwork (a new name is created with the options above)",
                allow_custom_value=True,
                elem_id=f"{PREFIX}_train_name",
            )
            refresh = gr.Button("Refresh", elem_id=f"{PREFIX}_refresh", scale=0, min_width=120)
        train_controls = _train_controls(ctx)
        start = gr.Button("Train hypernetwork", variant="primary", elem_id=f"{PREFIX}_start")
        train_message = gr.HTML("", elem_id=f"{PREFIX}_train_message")
    job_panel(ctx, HypernetworkJob.kind, PREFIX)

    create_names = list(create_controls)
    train_names = list(train_controls)

    def form(values: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
        return {"model": job_model(values[0]), **dict(zip(names, values[1:]))}

    def on_create(*values: Any) -> tuple[str, Any]:
        try:
            job = job_from_form(form(values, create_names))
            path = create_hypernetwork(ctx.host, job)
        except LiandanError as e:
            return _error(e), gr.update()
        message = f'<p class="liandan-message">Created hypernetwork {html.escape(str(path))}.</p>'
        return message, gr.update(choices=hypernetwork_names(ctx), value=job.name)

    def on_train(*values: Any) -> str:
        count = 1 + len(create_names)
        fields = form(values[:count], create_names)
        fields.update(dict(zip(train_names, values[count + 1 :])))
        fields["name"] = values[count] or fields["name"]
        try:
            job = job_from_form(fields)
            check_options(job)
            check_train_schedules(job.train)
        except LiandanError as e:
            return _error(e)
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    create_inputs = [model] + [create_controls[n] for n in create_names]
    create.click(on_create, create_inputs, [create_message, trained], queue=False)
    train_inputs = create_inputs + [trained] + [train_controls[n] for n in train_names]
    start.click(on_train, train_inputs, train_message, queue=False)
    refresh.click(lambda: gr.update(choices=hypernetwork_names(ctx)), None, trained, queue=False)
