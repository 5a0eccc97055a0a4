"""The concepts editor of the concept jobs' tabs (DreamBooth, LoRA): a table, one concept per row, with
Import/Export of a `concepts_list` JSON file (data/concepts.py), and the prior-loss weight."""

from __future__ import annotations

import dataclasses
import html
import typing
from pathlib import Path
from typing import Any

import gradio as gr

from liandan.errors import ConfigError, LiandanError
from liandan.jobs import ConceptSpec
from liandan.ui.spec_form import SpecForm

CONCEPT_FIELDS = [f.name for f in dataclasses.fields(ConceptSpec)]
_HINTS = typing.get_type_hints(ConceptSpec)


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
    elif isinstance(rows, dict):  # or its own {"headers": ..., "data": ...} value
        rows = rows.get("data", [])
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


def parse_concepts(values: dict[str, Any]) -> dict[str, Any]:
    """A form's values with its concepts table read as concept dicts (the spec validates them)."""
    if "concepts" not in values:
        return values
    return {**values, "concepts": concepts_from_rows(values["concepts"])}


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
