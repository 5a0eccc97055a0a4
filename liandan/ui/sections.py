"""What every training tab shares, built once: the model dropdown, a Create section, the artifact to train
(a dropdown with Refresh), the training / dataset / preview sections with a control for every field of
TrainSpec, DataSpec and PreviewSpec, the Train button and the job panel.

A method's tab is a `TrainingTab`: its spec, its own Create controls, its Create function and where its
artifacts are listed. Every control is keyed by its spec field path, so the form cannot drift from the spec.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from liandan.errors import ConfigError, LiandanError
from liandan.host.base import Host
from liandan.jobs import JobSpec, ValidationSpec
from liandan.ui.components import UIContext, job_model, job_panel, model_dropdown
from liandan.ui.spec_form import SpecForm

# the shared sections, row by row; every leaf of TrainSpec, DataSpec and PreviewSpec appears once
SECTIONS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    (
        "Dataset",
        (
            ("data.folder", "data.template", "data.prompt", "log_dir"),
            (
                "data.width",
                "data.height",
                "data.buckets",
                "data.resize_mode",
                "data.repeats",
                "data.recursive",
            ),
            ("data.filename_regex", "data.join_string", "data.shuffle_tags", "data.tag_dropout"),
            ("data.flip", "data.latent_sampling", "data.latent_cache", "data.use_alpha_weight"),
            ("data.weight",),
        ),
    ),
    (
        "Training",
        (
            ("train.learn_rate", "train.lr_scheduler", "train.lr_warmup_steps", "train.optimizer"),
            ("train.weight_decay", "train.batch_size", "train.gradient_accumulation", "train.max_steps"),
            ("train.clip_grad_mode", "train.clip_grad_value", "train.mixed_precision", "clip_skip"),
            ("train.save_every", "train.preview_every", "train.log_every", "train.early_stop_epochs"),
            ("train.seed", "train.nan_policy", "train.gradient_checkpointing", "train.move_unused_to_cpu"),
            ("train.noise_offset", "train.min_snr_gamma", "train.ema_decay", "train.ema_update_every"),
            ("train.fused_backward", "train.torch_compile", "train.cpu_threads", "train.data_workers"),
            ("train.resume", "train.resume_with_changes"),
        ),
    ),
    (
        "Preview",
        (
            ("preview.prompt", "preview.negative_prompt"),
            ("preview.steps", "preview.sampler", "preview.cfg_scale", "preview.seed"),
            ("preview.width", "preview.height", "preview.self_test"),
        ),
    ),
)

LABELS: dict[str, str] = {
    "data.folder": "Dataset directory",
    "data.template": "Prompt template",
    "data.prompt": "Prompt instead of the template ([filewords]: the caption)",
    "log_dir": "Log directory (empty: the default)",
    "data.width": "Width",
    "data.height": "Height",
    "data.buckets": "Aspect-ratio buckets (any size)",
    "data.resize_mode": "Resize to W×H",
    "data.repeats": "Repeats per epoch",
    "data.recursive": "Include subfolders",
    "data.filename_regex": "Filename regex",
    "data.join_string": "Join string",
    "data.shuffle_tags": "Shuffle tags",
    "data.tag_dropout": "Drop out tags",
    "data.flip": "Horizontal flip probability",
    "data.latent_sampling": "Latent sampling method",
    "data.latent_cache": "Latent cache",
    "data.weight": "Loss weight of this dataset",
    "data.use_alpha_weight": "Use PNG alpha as loss weight",
    "train.learn_rate": "Learning rate (A1111 schedule syntax: 0.005 or 0.1:500, 0.01)",
    "train.lr_scheduler": "Schedule",
    "train.lr_warmup_steps": "Warm-up steps",
    "train.optimizer": "Optimizer",
    "train.weight_decay": "Weight decay",
    "train.batch_size": "Batch size",
    "train.gradient_accumulation": "Gradient accumulation steps",
    "train.max_steps": "Max steps",
    "train.clip_grad_mode": "Gradient clipping",
    "train.clip_grad_value": "Clip value",
    "train.mixed_precision": "Mixed precision",
    "clip_skip": "CLIP skip",
    "train.save_every": "Save a copy every N steps (0: end only)",
    "train.preview_every": "Preview every N steps (0: off)",
    "train.log_every": "Log the loss every N steps",
    "train.early_stop_epochs": "Stop after N epochs without progress (0: off)",
    "train.seed": "Training seed",
    "train.nan_policy": "On a non-finite loss",
    "train.gradient_checkpointing": "Gradient checkpointing (less memory, slower)",
    "train.move_unused_to_cpu": "Move VAE and CLIP to RAM",
    "train.noise_offset": "Noise offset (0: off; ~0.05)",
    "train.min_snr_gamma": "Min-SNR gamma (0: off; ~5)",
    "train.ema_decay": "EMA decay of the saved weights (0: off)",
    "train.ema_update_every": "EMA update every N steps",
    "train.fused_backward": "Fused backward (step in backward: less memory; no accumulation)",
    "train.torch_compile": "torch.compile the UNet (slow start; pays on long GPU runs)",
    "train.cpu_threads": "CPU threads (0: all; 1 on a busy machine)",
    "train.data_workers": "Data loading processes (-1: auto, 0 on the CPU; 0: none)",
    "train.resume": "Resume this job's last saved state",
    "train.resume_with_changes": "Resume even if settings changed",
    "preview.prompt": "Preview prompt (empty: from the template)",
    "preview.negative_prompt": "Negative prompt",
    "preview.steps": "Sampling steps",
    "preview.sampler": "Sampler",
    "preview.cfg_scale": "CFG scale",
    "preview.seed": "Seed (-1: random)",
    "preview.width": "Width",
    "preview.height": "Height",
    "preview.self_test": "Self-test after each save (with / without)",
}


# A job's further datasets and its validation set, one folder per line with the numbers after "|". They take
# the dataset section's settings otherwise (each folder has its own captions, cache and repeats).
MORE_DATA: dict[str, tuple[str, tuple[str, ...], str]] = {
    "extra_data": (
        "More datasets trained at once (e.g. class images), one per line: folder | loss weight | repeats",
        ("weight", "repeats"),
        "/pictures/class | 1.0 | 1",
    ),
    "validation": (
        "Validation set (held out, scored without training): folder | every N steps | timesteps",
        ("every", "timesteps"),
        "/pictures/held-out | 100 | 4",
    ),
}


def training_sections(f: SpecForm[Any], ctx: UIContext, labels: Mapping[str, str]) -> None:
    """The dataset, training and preview sections, into form `f`; `labels` override the shared ones."""
    for title, rows in SECTIONS:
        with gr.Accordion(title, open=title != "Preview"):
            for row in rows:
                with gr.Row():
                    for path in row:
                        label = labels.get(path, LABELS[path])
                        if path == "data.template":
                            f.dropdown(path, label, ctx.template_choices())
                        else:
                            f.auto(path, label)
            if title == "Dataset":
                for path, (label, _, example) in MORE_DATA.items():
                    f.add(path, gr.Textbox("", label=label, placeholder=example, elem_id=f.elem_id(path)))


def _folder_lines(path: str, text: str) -> list[dict[str, Any]]:
    """Lines "folder | 0.5 | 2" as {"folder": ..., "weight": 0.5, "repeats": 2}; blank lines are skipped."""
    _, fields, _ = MORE_DATA[path]
    entries = []
    for line in text.splitlines():
        folder, *numbers = (part.strip() for part in line.split("|"))
        if not folder and not numbers:
            continue
        if not folder or len(numbers) > len(fields):
            raise ConfigError(f"{path}: {line.strip()!r} is not 'folder' or 'folder | {' | '.join(fields)}'")
        entry: dict[str, Any] = {"folder": folder}
        for name, number in zip(fields, numbers):
            try:
                entry[name] = float(number) if name == "weight" else int(number)
            except ValueError as e:
                raise ConfigError(f"{path}: {name} {number!r} in {line.strip()!r} is not a number") from e
        entries.append(entry)
    return entries


def with_more_data(job: Any, extra_text: str, validation_text: str) -> Any:
    """The job with the form's further datasets and validation set, each with the job's dataset settings."""
    extra = [
        job.data.from_dict({**job.data.to_dict(), **entry})
        for entry in _folder_lines("extra_data", extra_text)
    ]
    validation = _folder_lines("validation", validation_text)
    if len(validation) > 1:
        raise ConfigError("validation: one folder only")
    held_out = ValidationSpec.from_dict({**job.data.to_dict(), **validation[0]}) if validation else None
    return job.replace(extra_data=tuple(extra), validation=held_out)


@dataclass(frozen=True)
class TrainingTab:
    """One method's tab. `create_controls(f)` adds the Create section's own controls (the name among them)
    to form `f`; `own_train_controls(f)` those of its Train section beyond the shared ones; `create(host,
    job)` writes a new artifact and returns its path (None: the method has nothing to create before training,
    and the section holds its settings without a Create button); `names(ctx)` lists the artifacts there are
    to train."""

    prefix: str
    spec: type[JobSpec]
    noun: str  # "embedding", "hypernetwork": button and message text
    create_controls: Callable[[SpecForm[Any]], None]
    create: Callable[[Host, Any], Path] | None
    names: Callable[[UIContext], list[str]]
    own_train_controls: Callable[[SpecForm[Any]], None] = lambda f: None
    labels: Mapping[str, str] = field(default_factory=dict)
    # the form's values by field path as the spec reads them, for controls of the tab's own making (text
    # that stands for a list of sections, such as LoRA's concepts); may raise ConfigError
    parse_form: Callable[[dict[str, Any]], dict[str, Any]] = lambda values: values


@dataclass
class BuiltTab:
    """The built controls, for a tab's own wiring (e.g. choices that follow the model)."""

    model: Any
    create_form: SpecForm[Any]
    train_form: SpecForm[Any]
    trained: Any
    refresh: Any


def _error(e: Exception) -> str:
    return f'<p class="liandan-error">{html.escape(str(e))}</p>'


def plan_button(prefix: str) -> Any:
    """The "Plan memory" button beside a tab's Train button (its result goes in `plan_message_box`)."""
    return gr.Button("Plan memory", elem_id=f"{prefix}_plan", scale=0, min_width=160)


def plan_message_box(prefix: str) -> Any:
    return gr.HTML("", elem_id=f"{prefix}_plan_message")


def plan_message(ctx: UIContext, make_job: Callable[[], Any]) -> str:
    """The VRAM planner's answer for the tab's job (train/planner.py): dry runs on the GPU (minutes), never
    beside a training job, which would share the memory."""
    from liandan.train.planner import plan_job

    if any(not status.is_finished for status in ctx.runner.jobs()):
        return _error(ConfigError("a job is running: plan memory when it has finished"))
    try:
        plan = plan_job(make_job(), ctx.host)
    except LiandanError as e:
        return _error(e)
    return f'<pre class="liandan-message">{html.escape(plan.message)}</pre>'


def build_training_tab(ctx: UIContext, tab: TrainingTab) -> BuiltTab:
    prefix, noun = tab.prefix, tab.noun
    model = model_dropdown(ctx, prefix)
    create_form = SpecForm(tab.spec, prefix)
    with gr.Accordion(f"Create {noun}" if tab.create else noun.capitalize(), open=True):
        tab.create_controls(create_form)
        if tab.create is not None:
            create = gr.Button(f"Create {noun}", elem_id=f"{prefix}_create")
            create_message = gr.HTML("", elem_id=f"{prefix}_create_message")
    train_form = SpecForm(tab.spec, prefix)
    with gr.Accordion("Train", open=True):
        with gr.Row():
            trained = gr.Dropdown(
                tab.names(ctx),
                label=f"{noun.capitalize()} to train (a new name is created with the settings above)",
                allow_custom_value=True,
                elem_id=f"{prefix}_train_name",
            )
            refresh = gr.Button("Refresh", elem_id=f"{prefix}_refresh", scale=0, min_width=120)
        tab.own_train_controls(train_form)
        training_sections(train_form, ctx, tab.labels)
        with gr.Row():
            start = gr.Button(f"Train {noun}", variant="primary", elem_id=f"{prefix}_train")
            plan = plan_button(prefix)
        train_message = gr.HTML("", elem_id=f"{prefix}_train_message")
        plan_box = plan_message_box(prefix)
    job_panel(ctx, tab.spec.kind, prefix)

    create_paths, train_paths = list(create_form.controls), list(train_form.controls)

    def on_create(model_title: str, *values: Any) -> tuple[str, Any]:
        try:
            job = create_form.to_spec({"model": job_model(model_title), **dict(zip(create_paths, values))})
            path = tab.create(ctx.host, job)  # type: ignore[misc]
        except LiandanError as e:
            return _error(e), gr.update()
        message = f'<p class="liandan-message">Created {noun} {html.escape(str(path))}.</p>'
        return message, gr.update(choices=tab.names(ctx), value=job.name)

    def form_job(model_title: str, name: str, values: tuple[Any, ...]) -> Any:
        """The Create settings apply to a name that does not exist yet; the spec checks every value."""
        form = dict(zip(create_paths + train_paths, values))
        form.update(model=job_model(model_title), name=name or form.get("name", ""))
        more = [form.pop(path) for path in MORE_DATA]
        return with_more_data(train_form.to_spec(tab.parse_form(form)), *more)

    def on_train(model_title: str, name: str, *values: Any) -> str:
        try:
            job = form_job(model_title, name, values)
        except LiandanError as e:
            return _error(e)
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    def on_plan(model_title: str, name: str, *values: Any) -> str:
        return plan_message(ctx, lambda: form_job(model_title, name, values))

    create_inputs = [create_form.controls[p] for p in create_paths]
    train_inputs = [train_form.controls[p] for p in train_paths]
    if tab.create is not None:
        create.click(on_create, [model, *create_inputs], [create_message, trained], queue=False)
    start.click(on_train, [model, trained, *create_inputs, *train_inputs], train_message, queue=False)
    plan.click(on_plan, [model, trained, *create_inputs, *train_inputs], plan_box)
    refresh.click(lambda: gr.update(choices=tab.names(ctx)), None, trained, queue=False)
    return BuiltTab(model, create_form, train_form, trained, refresh)
