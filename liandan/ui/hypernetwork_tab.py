"""The "Hypernetwork" tab: Create hypernetwork (A1111's options) and Train (a HypernetworkJob), with the
shared job panel (progress, loss plot, previews, Interrupt, Resume).

Every control is keyed by its HypernetworkJob field ("layer_structure", "train.learn_rate", "data.folder"),
so the form and the spec cannot drift apart; `job_from_form` turns the values into one validated job.
"""

from __future__ import annotations

import html
import typing
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.jobs import DataSpec, HypernetworkJob, PreviewSpec, Spec, TrainSpec
from liandan.methods.hypernetwork import check_options, create_hypernetwork
from liandan.models.hypernetwork_modules import WEIGHT_INITS, activation_classes
from liandan.ui.components import UIContext, job_panel

PREFIX = "liandan_hn"
# widths real checkpoints have (SD1 768, SD2 1024, SDXL 2048 contexts; 320/640/1280 channels); none ticked
# means every width the chosen model has, which also covers other models (the tiny ones)
SIZE_CHOICES = ["768", "1024", "2048", "320", "640", "1280"]
CREATE_FIELDS = (
    "name", "sizes", "layer_structure", "activation", "weight_init", "layer_norm", "use_dropout",
    "dropout_structure", "last_layer_dropout", "activate_output", "overwrite",
)  # fmt: skip
SECTIONS: dict[str, type[Spec]] = {"train": TrainSpec, "data": DataSpec, "preview": PreviewSpec}


def _default(key: str) -> Any:
    """The job's default for a field key ("train.max_steps"): the hypernetwork job's own section defaults."""
    section, _, name = key.rpartition(".")
    spec = getattr(HypernetworkJob(), section) if section else HypernetworkJob()
    return getattr(spec, name)


def _hint(key: str) -> Any:
    section, _, name = key.rpartition(".")
    return typing.get_type_hints(SECTIONS[section] if section else HypernetworkJob)[name]


def _id(key: str) -> str:
    return f"{PREFIX}_{key.replace('.', '_')}"


def _text(key: str, label: str, placeholder: str = "") -> Any:
    return gr.Textbox(str(_default(key)), label=label, placeholder=placeholder, elem_id=_id(key))


def _number(key: str, label: str, precision: int | None = 0) -> Any:
    return gr.Number(_default(key), label=label, precision=precision, elem_id=_id(key))


def _check(key: str, label: str) -> Any:
    return gr.Checkbox(value=_default(key), label=label, elem_id=_id(key))


def _choice(key: str, label: str) -> Any:
    return gr.Dropdown(list(typing.get_args(_hint(key))), value=_default(key), label=label, elem_id=_id(key))


def job_from_form(values: dict[str, Any]) -> HypernetworkJob:
    """Widget values keyed by field ("train.max_steps") -> a validated HypernetworkJob."""
    data: dict[str, Any] = {}
    for key, value in values.items():
        if key == "sizes":
            value = [int(v) for v in value]
        elif _hint(key) is int:
            value = int(value)
        elif _hint(key) is float:
            value = float(value)
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return HypernetworkJob.from_dict(data)


def hypernetwork_names(ctx: UIContext) -> list[str]:
    return sorted(p.stem for p in ctx.host.folders.hypernetworks.glob("*.pt"))


def _create_controls() -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["name"] = _text("name", "Name")
    c["sizes"] = gr.CheckboxGroup(
        SIZE_CHOICES, value=[], label="Modules (none ticked: every attention width of the model)",
        elem_id=_id("sizes"),
    )  # fmt: skip
    with gr.Row():
        c["layer_structure"] = _text("layer_structure", "Hypernetwork layer structure", "1, 2, 1")
        c["activation"] = gr.Dropdown(
            sorted(activation_classes()), value=_default("activation"),
            label="Activation function", elem_id=_id("activation"),
        )  # fmt: skip
        c["weight_init"] = gr.Dropdown(
            list(WEIGHT_INITS), value=_default("weight_init"), label="Layer weight initialization",
            elem_id=_id("weight_init"),
        )  # fmt: skip
    with gr.Row():
        c["layer_norm"] = _check("layer_norm", "Add layer normalization")
        c["use_dropout"] = _check("use_dropout", "Use dropout")
        c["dropout_structure"] = _text(
            "dropout_structure", "Dropout structure", "0, 0.3, 0 (empty: A1111's default)"
        )
        c["last_layer_dropout"] = _check("last_layer_dropout", "Last layer dropout")
        c["activate_output"] = _check("activate_output", "Activate output")
        c["overwrite"] = _check("overwrite", "Overwrite old hypernetwork")
    return c


def _train_controls() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["data.folder"] = _text("data.folder", "Dataset directory", "/path/to/pictures")
        c["data.template"] = _text("data.template", "Prompt template")
        c["log_dir"] = gr.Textbox("", label="Log directory (empty: default)", elem_id=_id("log_dir"))
    with gr.Row():
        c["train.learn_rate"] = _text("train.learn_rate", "Learning rate (A1111 schedule syntax)")
        c["train.lr_scheduler"] = _choice("train.lr_scheduler", "Schedule")
        c["train.optimizer"] = _choice("train.optimizer", "Optimizer")
    with gr.Row():
        c["train.batch_size"] = _number("train.batch_size", "Batch size")
        c["train.gradient_accumulation"] = _number("train.gradient_accumulation", "Gradient accumulation")
        c["train.max_steps"] = _number("train.max_steps", "Max steps")
        c["train.early_stop_epochs"] = _number(
            "train.early_stop_epochs", "Early stop after flat epochs (0 off)"
        )
    with gr.Row():
        c["data.width"] = _number("data.width", "Width")
        c["data.height"] = _number("data.height", "Height")
        c["data.buckets"] = _check("data.buckets", "Aspect-ratio buckets")
        c["data.flip"] = gr.Slider(0, 1, value=_default("data.flip"), step=0.05, label="Flip probability",
                                   elem_id=_id("data.flip"))  # fmt: skip
    with gr.Row():
        c["data.shuffle_tags"] = _check("data.shuffle_tags", "Shuffle tags")
        c["data.tag_dropout"] = gr.Slider(0, 1, value=_default("data.tag_dropout"), step=0.05,
                                          label="Tag dropout", elem_id=_id("data.tag_dropout"))  # fmt: skip
        c["data.latent_sampling"] = _choice("data.latent_sampling", "Latent sampling")
        c["data.use_alpha_weight"] = _check("data.use_alpha_weight", "Use PNG alpha as loss weight")
    with gr.Row():
        c["train.clip_grad_mode"] = _choice("train.clip_grad_mode", "Gradient clipping")
        c["train.clip_grad_value"] = _text("train.clip_grad_value", "Clip value")
        c["train.save_every"] = _number("train.save_every", "Save a copy every N steps (0: end only)")
        c["train.preview_every"] = _number("train.preview_every", "Preview every N steps (0: off)")
    with gr.Row():
        c["preview.prompt"] = _text("preview.prompt", "Preview prompt (empty: from the dataset)")
        c["preview.seed"] = _number("preview.seed", "Preview seed (-1: random)")
        c["preview.steps"] = _number("preview.steps", "Preview steps")
        c["preview.width"] = _number("preview.width", "Preview width")
        c["preview.height"] = _number("preview.height", "Preview height")
        c["train.move_unused_to_cpu"] = _check("train.move_unused_to_cpu", "Move VAE and CLIP to RAM")
    return c


def _error(e: Exception) -> str:
    return f'<p class="liandan-error">{html.escape(str(e))}</p>'


def build(ctx: UIContext) -> None:
    model = gr.Dropdown(
        ["", *ctx.checkpoint_choices()], value="", label="Model (empty: current)", elem_id=_id("model")
    )
    with gr.Accordion("Create hypernetwork", open=True):
        create_controls = _create_controls()
        create = gr.Button("Create hypernetwork", elem_id=_id("create"))
        create_message = gr.HTML("", elem_id=_id("create_message"))
    with gr.Accordion("Train", open=True):
        with gr.Row():
            trained = gr.Dropdown(
                hypernetwork_names(ctx),
                label="Hypernetwork (a new name is created with the options above)",
                allow_custom_value=True,
                elem_id=_id("train_name"),
            )
            refresh = gr.Button("Refresh", elem_id=_id("refresh"))
        train_controls = _train_controls()
        start = gr.Button("Train hypernetwork", variant="primary", elem_id=_id("start"))
        train_message = gr.HTML("", elem_id=_id("train_message"))
    job_panel(ctx, HypernetworkJob.kind, PREFIX)

    create_names = list(create_controls)
    train_names = list(train_controls)

    def form(values: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
        return {"model": values[0], **dict(zip(names, values[1:]))}

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
        if not fields["log_dir"]:
            fields.pop("log_dir")
        try:
            job = job_from_form(fields)
            check_options(job)
        except LiandanError as e:
            return _error(e)
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    create_inputs = [model] + [create_controls[n] for n in create_names]
    create.click(on_create, create_inputs, [create_message, trained], queue=False)
    train_inputs = create_inputs + [trained] + [train_controls[n] for n in train_names]
    start.click(on_train, train_inputs, train_message, queue=False)
    refresh.click(lambda: gr.update(choices=hypernetwork_names(ctx)), None, trained, queue=False)
