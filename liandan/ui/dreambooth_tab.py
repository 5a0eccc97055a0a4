"""The DreamBooth tab: the concepts editor (a table, one concept per row, with import/export of a
`concepts_list` JSON file), DreamBooth's own settings, the shared training / dataset / preview sections,
Train, Export job file, the Convert section (single file <-> diffusers folder) and the shared job panel
(progress, loss, previews, Interrupt, Resume), every control keyed by DreamBoothJob's field paths."""

from __future__ import annotations

import dataclasses
import html
import json
import typing
from pathlib import Path
from typing import Any

import gradio as gr

from liandan.errors import ConfigError, LiandanError
from liandan.jobs import ConceptSpec, DreamBoothJob, job_to_dict
from liandan.ui.components import UIContext, job_model, job_panel, model_dropdown, model_dropdown_choices
from liandan.ui.sections import MORE_DATA, training_sections, with_more_data
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_db"
CONCEPT_FIELDS = [f.name for f in dataclasses.fields(ConceptSpec)]
_HINTS = typing.get_type_hints(ConceptSpec)
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


def concept_rows(concepts: tuple[ConceptSpec, ...]) -> list[list[Any]]:
    """Concepts as table rows (paths as text, an unset class folder empty)."""
    rows = []
    for concept in concepts:
        values = [getattr(concept, name) for name in CONCEPT_FIELDS]
        rows.append([("" if v == Path() else str(v)) if isinstance(v, Path) else v for v in values])
    return rows


def concepts_from_rows(rows: Any) -> list[dict[str, Any]]:
    """Table rows as concept dicts; rows without any folder or prompt are skipped (the table's first row
    starts with its default numbers), blank cells keep the default, numbers typed as text become numbers (a
    bad one is a ConfigError naming its row and column)."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # gradio may hand over a pandas DataFrame
        rows = rows.values.tolist()
    concepts = []
    for number, row in enumerate(rows or [], 1):
        cells = {
            name: value for name, value in zip(CONCEPT_FIELDS, row) if str(value).strip() not in ("", "nan")
        }
        if all(_HINTS[name] in (int, float) for name in cells):
            continue
        for name, value in cells.items():
            hint = _HINTS[name]
            try:
                cells[name] = (
                    int(float(value)) if hint is int else float(value) if hint is float else str(value)
                )
            except ValueError as e:
                raise ConfigError(f"concept row {number}: {name} = {value!r} is not a number") from e
        concepts.append(cells)
    return concepts


def job_from_form(values: dict[str, Any]) -> DreamBoothJob:
    """Widget values by field path (the concepts as table rows) -> a validated job."""
    values = {**values}
    if "concepts" in values:
        values["concepts"] = concepts_from_rows(values["concepts"])
    return SpecForm(DreamBoothJob, PREFIX).to_spec(values)


def concepts_controls(f: SpecForm[Any]) -> None:
    """The concepts table of a concept job's form (`concepts`, `prior_loss_weight`; values through
    `concepts_from_rows`), with Import/Export of a concepts_list file; ids start with the form's prefix."""
    prefix = f.prefix
    with gr.Accordion("Concepts (one per row; a class folder turns prior preservation on)", open=True):
        f.add(
            "concepts",
            gr.Dataframe(
                headers=CONCEPT_FIELDS,
                datatype=["number" if _HINTS[n] in (int, float) else "str" for n in CONCEPT_FIELDS],
                value=[["", "", "", "", 0, "", 7.0, 20, 1, 1.0]],
                row_count=(1, "dynamic"),
                col_count=(len(CONCEPT_FIELDS), "fixed"),
                type="array",
                interactive=True,
                label="Concepts ([filewords] in a prompt: each image's caption)",
                elem_id=f.elem_id("concepts"),
            ),
        )
        with gr.Row():
            concepts_file = gr.Textbox(
                "", label="concepts_list JSON file (DreamBooth extension, diffusers scripts)",
                elem_id=f"{prefix}_concepts_file",
            )  # fmt: skip
            import_button = gr.Button("Import", elem_id=f"{prefix}_import", scale=0, min_width=100)
            export_button = gr.Button("Export", elem_id=f"{prefix}_export", scale=0, min_width=100)
        f.auto("prior_loss_weight", "Prior loss weight (class images' loss, times the concept's)")
    table = f.controls["concepts"]
    notice = gr.HTML("", elem_id=f"{prefix}_concepts_message")

    def on_import(path: str) -> tuple[Any, str]:
        from liandan.data.concepts import read_concepts_file

        try:
            concepts = read_concepts_file(Path(path).expanduser())
        except LiandanError as e:
            return gr.update(), _error(e)
        return gr.update(value=concept_rows(concepts)), _message(f"Imported {len(concepts)} concept(s).")

    def on_export(path: str, rows: Any) -> str:
        from liandan.data.concepts import write_concepts_file

        try:
            if not path.strip():
                raise ConfigError("name the JSON file to export the concepts to")
            concepts = [ConceptSpec.from_dict(c) for c in concepts_from_rows(rows)]
            written = write_concepts_file(Path(path).expanduser(), concepts)
        except LiandanError as e:
            return _error(e)
        return _message(f"Wrote {len(concepts)} concept(s) to {written}.")

    import_button.click(on_import, concepts_file, [table, notice], queue=False)
    export_button.click(on_export, [concepts_file, table], notice, queue=False)


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
    message = gr.HTML("", elem_id=f"{PREFIX}_train_message")
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
