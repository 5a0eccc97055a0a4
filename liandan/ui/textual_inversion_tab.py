"""The Textual Inversion tab: Create embedding, Train, and the shared job panel (progress, loss, previews,
Interrupt, Resume).

Train controls are keyed by their TextualInversionJob field path ("train.learn_rate", "data.folder", ...),
so the form and the spec cannot drift apart; their defaults come from the spec.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from liandan.errors import ConfigError, LiandanError
from liandan.formats.embedding import sanitize_name
from liandan.jobs import TextualInversionJob
from liandan.ui.components import UIContext, check_train_schedules, job_model, job_panel, model_dropdown
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_ti"


def _form() -> SpecForm[TextualInversionJob]:
    return SpecForm(TextualInversionJob, PREFIX)


def job_from_form(values: dict[str, Any]) -> TextualInversionJob:
    """Widget values by field path → a validated job: numbers to the field's type, "" → None for options."""
    return _form().to_spec(values)


def _create_section(ctx: UIContext, model: Any) -> tuple[Any, Any]:
    with gr.Group():
        gr.Markdown("### Create embedding")
        with gr.Row():
            name = gr.Textbox(label="Name", elem_id=f"{PREFIX}_create_name")
            init_text = gr.Textbox("*", label="Initialization text", elem_id=f"{PREFIX}_create_init_text")
        with gr.Row():
            vectors = gr.Slider(1, 75, value=1, step=1, label="Number of vectors per token",
                                elem_id=f"{PREFIX}_create_vectors")  # fmt: skip
            overwrite = gr.Checkbox(
                False, label="Overwrite old embedding", elem_id=f"{PREFIX}_create_overwrite"
            )
            file_format = gr.Radio(["pt", "safetensors"], value="pt", label="Save as",
                                   elem_id=f"{PREFIX}_create_format")  # fmt: skip
        create = gr.Button("Create embedding", elem_id=f"{PREFIX}_create")
        result = gr.HTML("", elem_id=f"{PREFIX}_create_result")

    def on_create(model_title: str, *values: Any) -> tuple[str, Any]:
        from liandan.methods.embedding_create import create_embedding

        name_value, init_value, count, overwrite_value, fmt = values
        try:
            path = create_embedding(ctx.host, name_value, init_value, int(count), bool(overwrite_value),
                                    model=job_model(model_title), file_format=fmt)  # fmt: skip
        except LiandanError as e:
            return f'<p class="liandan-error">{html.escape(str(e))}</p>', gr.update()
        return f'<p class="liandan-message">Created {html.escape(str(path))}</p>', gr.update(value=path.stem)

    inputs = [model, name, init_text, vectors, overwrite, file_format]
    return create, (on_create, inputs, result)


def _train_controls(ctx: UIContext) -> dict[str, Any]:
    f = _form()
    with gr.Row():
        f.text("name", "Embedding to train (created with the settings above if missing)")
        f.text("data.folder", "Dataset directory", "/path/to/images")
        f.text("log_dir", "Log directory (empty: textual_inversion)")
    with gr.Row():
        templates = ctx.template_choices()
        f.dropdown("data.template", "Prompt template", templates)
        f.text("train.learn_rate", "Embedding learning rate", "0.005 or 0.1:500, 0.01")
        f.number("train.max_steps", "Max steps")
    with gr.Row():
        f.number("train.batch_size", "Batch size")
        f.number("train.gradient_accumulation", "Gradient accumulation steps")
        f.number("data.width", "Width", step=8)
        f.number("data.height", "Height", step=8)
        f.check("data.buckets", "Aspect-ratio buckets (any size)")
    with gr.Row():
        f.radio("train.clip_grad_mode", "Gradient clipping")
        f.text("train.clip_grad_value", "Clip value")
        f.radio("data.latent_sampling", "Latent sampling method")
    with gr.Row():
        f.check("data.shuffle_tags", "Shuffle tags")
        f.slider("data.tag_dropout", "Drop out tags", 0, 1, 0.05)
        f.slider("data.flip", "Horizontal flip probability", 0, 1, 0.05)
        f.check("data.use_alpha_weight", "Use PNG alpha as loss weight")
    with gr.Row():
        f.text("data.filename_regex", "Filename regex")
        f.text("data.join_string", "Join string")
    with gr.Row():
        f.number("train.save_every", "Save a copy of the embedding every N steps")
        f.number("train.preview_every", "Save a preview image every N steps")
        f.check("save_png_cards", "Save embedding PNG cards")
        f.radio("file_format", "Save as")
    with gr.Row():
        f.number("train.early_stop_epochs", "Stop after N epochs without progress")
        f.check("train.move_unused_to_cpu", "Move VAE and CLIP to RAM")
        f.radio("train.mixed_precision", "Mixed precision")
        f.number("clip_skip", "CLIP skip")
    with gr.Accordion("Preview", open=False):
        f.text("preview.prompt", "Preview prompt (empty: from the template)")
        f.text("preview.negative_prompt", "Negative prompt")
        with gr.Row():
            f.number("preview.steps", "Sampling steps")
            f.radio("preview.sampler", "Sampler")
            f.number("preview.cfg_scale", "CFG scale", step=0.5)
            f.number("preview.seed", "Seed (-1: random)")
            f.number("preview.width", "Width", step=8)
            f.number("preview.height", "Height", step=8)
    return f.controls


def build(ctx: UIContext) -> None:
    model = model_dropdown(ctx, PREFIX)
    create, (on_create, create_inputs, create_result) = _create_section(ctx, model)
    with gr.Group():
        gr.Markdown("### Train")
        controls = _train_controls(ctx)
        train = gr.Button("Train embedding", variant="primary", elem_id=f"{PREFIX}_train")
        message = gr.HTML("", elem_id=f"{PREFIX}_message")
    job_panel(ctx, TextualInversionJob.kind, PREFIX)
    create.click(on_create, create_inputs, [create_result, controls["name"]], queue=False)

    paths = list(controls)

    def on_train(model_title: str, init_text: str, vectors: float, *values: Any) -> str:
        form = dict(zip(paths, values))
        form.update(model=job_model(model_title), init_text=init_text, vectors=vectors)
        try:
            job = job_from_form(form)
            # refused here rather than after "Started": a bad name or lr schedule is known before loading
            if not job.name.strip():
                raise ConfigError("Embedding to train: enter a name (or create one above)")
            sanitize_name(job.name)
            check_train_schedules(job.train)
        except LiandanError as e:
            return f'<p class="liandan-error">{html.escape(str(e))}</p>'
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    # the Create section's init text and vector count apply when the embedding does not exist yet
    train_inputs = [model, *create_inputs[2:4], *(controls[p] for p in paths)]
    train.click(on_train, train_inputs, message, queue=False)
