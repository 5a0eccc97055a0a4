"""The Textual Inversion tab: Create embedding, Train, and the shared job panel (progress, loss, previews,
Interrupt, Resume).

Train controls are keyed by their TextualInversionJob field path ("train.learn_rate", "data.folder", ...),
so the form and the spec cannot drift apart; their defaults come from the spec.
"""

from __future__ import annotations

import html
import typing
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.jobs import DataSpec, PreviewSpec, TextualInversionJob, TrainSpec
from liandan.ui.components import UIContext, job_panel

PREFIX = "liandan_ti"
CURRENT_MODEL = "(current model)"
_DEFAULT = TextualInversionJob()
_SECTIONS: dict[str, type] = {"train": TrainSpec, "data": DataSpec, "preview": PreviewSpec}


def _owner_and_field(path: str) -> tuple[type, str]:
    section, _, leaf = path.rpartition(".")
    return (_SECTIONS[section] if section else TextualInversionJob), leaf


def _default(path: str) -> Any:
    value: Any = _DEFAULT
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _elem_id(path: str) -> str:
    return f"{PREFIX}_{path.replace('.', '_')}"


def _text(path: str, label: str, placeholder: str = "", lines: int = 1) -> Any:
    value = _default(path)
    return gr.Textbox("" if value is None else str(value), label=label, placeholder=placeholder,
                      lines=lines, elem_id=_elem_id(path))  # fmt: skip


def _number(path: str, label: str, step: float = 1) -> Any:
    return gr.Number(_default(path), label=label, step=step, elem_id=_elem_id(path))


def _check(path: str, label: str) -> Any:
    return gr.Checkbox(value=_default(path), label=label, elem_id=_elem_id(path))


def _choice(path: str, label: str) -> Any:
    owner, leaf = _owner_and_field(path)
    choices = list(typing.get_args(typing.get_type_hints(owner)[leaf]))
    return gr.Radio(choices, value=_default(path), label=label, elem_id=_elem_id(path))


def job_from_form(values: dict[str, Any]) -> TextualInversionJob:
    """Widget values by field path → a validated job: numbers to the field's type, "" → None for options."""
    data: dict[str, Any] = {}
    for path, value in values.items():
        owner, leaf = _owner_and_field(path)
        hint = typing.get_type_hints(owner)[leaf]
        if hint is int and value is not None:
            value = int(value)
        elif value == "" and type(None) in typing.get_args(hint):
            value = None
        node = data
        *parents, _ = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TextualInversionJob.from_dict(data)


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
                                    model=_model_value(model_title), file_format=fmt)  # fmt: skip
        except LiandanError as e:
            return f'<p class="liandan-error">{html.escape(str(e))}</p>', gr.update()
        return f'<p class="liandan-message">Created {html.escape(str(path))}</p>', gr.update(value=path.stem)

    inputs = [model, name, init_text, vectors, overwrite, file_format]
    return create, (on_create, inputs, result)


def _model_value(title: str | None) -> str:
    return "" if not title or title == CURRENT_MODEL else title


def _train_controls(ctx: UIContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["name"] = _text("name", "Embedding to train (created with the settings above if missing)")
        c["data.folder"] = _text("data.folder", "Dataset directory", "/path/to/images")
        c["log_dir"] = _text("log_dir", "Log directory (empty: textual_inversion)")
    with gr.Row():
        templates = ctx.template_choices()
        c["data.template"] = gr.Dropdown(templates, value=_default("data.template"), label="Prompt template",
                                         elem_id=_elem_id("data.template"))  # fmt: skip
        c["train.learn_rate"] = _text("train.learn_rate", "Embedding learning rate", "0.005 or 0.1:500, 0.01")
        c["train.max_steps"] = _number("train.max_steps", "Max steps")
    with gr.Row():
        c["train.batch_size"] = _number("train.batch_size", "Batch size")
        c["train.gradient_accumulation"] = _number(
            "train.gradient_accumulation", "Gradient accumulation steps"
        )
        c["data.width"] = _number("data.width", "Width", 8)
        c["data.height"] = _number("data.height", "Height", 8)
        c["data.buckets"] = _check("data.buckets", "Aspect-ratio buckets (any size)")
    with gr.Row():
        c["train.clip_grad_mode"] = _choice("train.clip_grad_mode", "Gradient clipping")
        c["train.clip_grad_value"] = _text("train.clip_grad_value", "Clip value")
        c["data.latent_sampling"] = _choice("data.latent_sampling", "Latent sampling method")
    with gr.Row():
        c["data.shuffle_tags"] = _check("data.shuffle_tags", "Shuffle tags")
        c["data.tag_dropout"] = gr.Slider(0, 1, value=0, step=0.05, label="Drop out tags",
                                          elem_id=_elem_id("data.tag_dropout"))  # fmt: skip
        c["data.flip"] = gr.Slider(0, 1, value=0, step=0.05, label="Horizontal flip probability",
                                   elem_id=_elem_id("data.flip"))  # fmt: skip
        c["data.use_alpha_weight"] = _check("data.use_alpha_weight", "Use PNG alpha as loss weight")
    with gr.Row():
        c["data.filename_regex"] = _text("data.filename_regex", "Filename regex")
        c["data.join_string"] = _text("data.join_string", "Join string")
    with gr.Row():
        c["train.save_every"] = _number("train.save_every", "Save a copy of the embedding every N steps")
        c["train.preview_every"] = _number("train.preview_every", "Save a preview image every N steps")
        c["save_png_cards"] = _check("save_png_cards", "Save embedding PNG cards")
        c["file_format"] = _choice("file_format", "Save as")
    with gr.Row():
        c["train.early_stop_epochs"] = _number(
            "train.early_stop_epochs", "Stop after N epochs without progress"
        )
        c["train.move_unused_to_cpu"] = _check("train.move_unused_to_cpu", "Move VAE and CLIP to RAM")
        c["train.mixed_precision"] = _choice("train.mixed_precision", "Mixed precision")
        c["clip_skip"] = _number("clip_skip", "CLIP skip")
    with gr.Accordion("Preview", open=False):
        c["preview.prompt"] = _text("preview.prompt", "Preview prompt (empty: from the template)")
        c["preview.negative_prompt"] = _text("preview.negative_prompt", "Negative prompt")
        with gr.Row():
            c["preview.steps"] = _number("preview.steps", "Sampling steps")
            c["preview.sampler"] = _choice("preview.sampler", "Sampler")
            c["preview.cfg_scale"] = _number("preview.cfg_scale", "CFG scale", 0.5)
            c["preview.seed"] = _number("preview.seed", "Seed (-1: random)")
            c["preview.width"] = _number("preview.width", "Width", 8)
            c["preview.height"] = _number("preview.height", "Height", 8)
    return c


def build(ctx: UIContext) -> None:
    model_choices = [CURRENT_MODEL] if ctx.in_webui else [CURRENT_MODEL, *ctx.checkpoint_choices()]
    model = gr.Dropdown(model_choices, value=CURRENT_MODEL, label="Model", elem_id=f"{PREFIX}_model")
    create, (on_create, create_inputs, create_result) = _create_section(ctx, model)
    with gr.Group():
        gr.Markdown("### Train")
        controls = _train_controls(ctx)
        train = gr.Button("Train embedding", variant="primary", elem_id=f"{PREFIX}_train")
        message = gr.HTML("", elem_id=f"{PREFIX}_message")
    job_panel(ctx, TextualInversionJob.kind, PREFIX)
    create.click(on_create, create_inputs, [create_result, controls["name"]], queue=False)

    paths = list(controls)

    from liandan.methods.textual_inversion import check_schedules

    def on_train(model_title: str, init_text: str, vectors: float, *values: Any) -> str:
        form = dict(zip(paths, values))
        form.update(model=_model_value(model_title), init_text=init_text, vectors=vectors)
        try:
            job = job_from_form(form)
            check_schedules(job)  # a malformed lr schedule is refused here, not after the model loaded
        except LiandanError as e:
            return f'<p class="liandan-error">{html.escape(str(e))}</p>'
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    # the Create section's init text and vector count apply when the embedding does not exist yet
    train_inputs = [model, *create_inputs[2:4], *(controls[p] for p in paths)]
    train.click(on_train, train_inputs, message, queue=False)
