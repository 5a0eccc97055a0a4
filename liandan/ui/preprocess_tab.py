"""The "Preprocess & caption" tab: a PreprocessJob form, a Start button, and the shared job status panel.

Each control is keyed by its PreprocessJob field name, so the form and the spec cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import html
import typing
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.preprocess.batch import check_folders
from liandan.preprocess.job import PreprocessJob
from liandan.ui.components import UIContext, job_panel

PREFIX = "liandan_preprocess"
CAPTIONER_LABELS = {
    "deepbooru": "Deepbooru",
    "blip": "BLIP",
    "wd14": "WD14",
    "deepdanbooru": "DeepDanbooru project",
}


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(PreprocessJob) if f.name == name)


def _slider(name: str, label: str, lo: float, hi: float, step: float) -> Any:
    return gr.Slider(lo, hi, value=_default(name), step=step, label=label, elem_id=f"{PREFIX}_{name}")


def _radio(name: str, label: str) -> Any:
    hint = typing.get_type_hints(PreprocessJob)[name]
    return gr.Radio(
        list(typing.get_args(hint)), value=_default(name), label=label, elem_id=f"{PREFIX}_{name}"
    )


def _check(name: str, label: str) -> Any:
    return gr.Checkbox(value=_default(name), label=label, elem_id=f"{PREFIX}_{name}")


def _text(name: str, label: str, placeholder: str = "") -> Any:
    value = _default(name)
    return gr.Textbox("" if value is None else str(value), label=label, placeholder=placeholder,
                      elem_id=f"{PREFIX}_{name}")  # fmt: skip


def job_from_form(values: dict[str, Any]) -> PreprocessJob:
    """Widget values → spec: ints from sliders, checkbox labels → captioner names, "" → no project."""
    hints = typing.get_type_hints(PreprocessJob)
    data: dict[str, Any] = {}
    for name, value in values.items():
        if name == "captioners":
            by_label = {label: key for key, label in CAPTIONER_LABELS.items()}
            value = tuple(by_label[label] for label in value)
        elif hints[name] is int:
            value = int(value)
        elif name == "deepdanbooru_project" and not value:
            value = None
        data[name] = value
    return PreprocessJob.from_dict(data)


def _controls() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["source"] = _text("source", "Source folder (only read)", "/path/to/pictures")
        c["destination"] = _text("destination", "Destination folder", "/path/to/dataset")
    with gr.Row():
        c["recursive"] = _check("recursive", "Include subfolders")
        c["in_place_captions"] = _check(
            "in_place_captions", "Captions only, written beside the source images"
        )
    with gr.Accordion("Image operations", open=True):
        with gr.Row():
            c["width"] = _slider("width", "Width", 64, 2048, 8)
            c["height"] = _slider("height", "Height", 64, 2048, 8)
        with gr.Row():
            c["resize_mode"] = _radio("resize_mode", "Resize")
            c["flip"] = _radio("flip", "Create flipped copies")
            c["output_format"] = _radio("output_format", "Save as")
        with gr.Row():
            c["split_oversized"] = _check("split_oversized", "Split oversized images")
            c["split_threshold"] = _slider("split_threshold", "Split threshold", 0, 1, 0.05)
            c["overlap_ratio"] = _slider("overlap_ratio", "Overlap ratio", 0, 0.9, 0.05)
        c["crop"] = _radio("crop", "Crop (instead of resize)")
        with gr.Row():
            c["focal_face_weight"] = _slider("focal_face_weight", "Focal point: face weight", 0, 1, 0.05)
            c["focal_entropy_weight"] = _slider(
                "focal_entropy_weight", "Focal point: entropy weight", 0, 1, 0.05
            )
            c["focal_edges_weight"] = _slider("focal_edges_weight", "Focal point: edges weight", 0, 1, 0.05)
            c["focal_debug"] = _check("focal_debug", "Save focal debug images")
        with gr.Row():
            c["autosize_min_dim"] = _slider(
                "autosize_min_dim", "Auto size: dimension lower bound", 64, 2048, 64
            )
            c["autosize_max_dim"] = _slider(
                "autosize_max_dim", "Auto size: dimension upper bound", 64, 2048, 64
            )
            c["autosize_min_area"] = _slider("autosize_min_area", "Area lower bound", 4096, 4194304, 1)
            c["autosize_max_area"] = _slider("autosize_max_area", "Area upper bound", 4096, 4194304, 1)
        with gr.Row():
            c["autosize_objective"] = _radio("autosize_objective", "Auto size objective")
            c["autosize_error_threshold"] = _slider("autosize_error_threshold", "Error threshold", 0, 1, 0.01)
    with gr.Accordion("Captions", open=True):
        labels = list(CAPTIONER_LABELS.values())
        c["captioners"] = gr.CheckboxGroup(
            labels, value=[], label="Captioners (joined)", elem_id=f"{PREFIX}_captioners"
        )
        with gr.Row():
            c["existing_caption"] = _radio("existing_caption", "Existing caption")
            c["caption_in_filename"] = _check(
                "caption_in_filename", "Caption in the file name instead of .txt"
            )
        with gr.Row():
            c["tag_threshold"] = _slider(
                "tag_threshold", "Deepbooru score threshold (guides: 0.75)", 0, 1, 0.01
            )
            c["tag_sort"] = _radio("tag_sort", "Sort tags")
            c["tag_filter"] = _text("tag_filter", "Filter out tags", "comma-separated")
        with gr.Row():
            c["tag_use_spaces"] = _check("tag_use_spaces", "Spaces instead of underscores")
            c["tag_escape_brackets"] = _check("tag_escape_brackets", "Escape brackets")
            c["tag_drop_rating"] = _check("tag_drop_rating", "Drop rating: tags")
            c["tag_include_scores"] = _check("tag_include_scores", "Include scores")
        c["deepdanbooru_project"] = _text(
            "deepdanbooru_project", "DeepDanbooru project folder (optional extra)"
        )
        with gr.Row():
            c["blip_model"] = _text("blip_model", "BLIP model (repository or folder)")
            c["blip_num_beams"] = _slider("blip_num_beams", "BLIP beams", 1, 16, 1)
            c["blip_min_length"] = _slider("blip_min_length", "BLIP min length", 0, 128, 1)
            c["blip_max_length"] = _slider("blip_max_length", "BLIP max length", 1, 256, 1)
        with gr.Row():
            c["wd14_model"] = _text("wd14_model", "WD14 model (repository or folder)")
            c["wd14_general_threshold"] = _slider(
                "wd14_general_threshold", "WD14 general threshold", 0, 1, 0.01
            )
            c["wd14_character_threshold"] = _slider(
                "wd14_character_threshold", "Character threshold", 0, 1, 0.01
            )
        with gr.Row():
            c["wd14_rating_tags"] = _check("wd14_rating_tags", "WD14 rating tag")
            c["wd14_character_first"] = _check("wd14_character_first", "Character tags first")
            c["wd14_exclude_tags"] = _text("wd14_exclude_tags", "WD14 excluded tags", "comma-separated")
    with gr.Row():
        c["device"] = _radio("device", "Device")
        c["batch_size"] = _slider("batch_size", "Caption batch size", 1, 64, 1)
        c["allow_download"] = _check("allow_download", "Download missing weights")
    return c


def build(ctx: UIContext) -> None:
    controls = _controls()
    names = list(controls)
    with gr.Row():
        start = gr.Button("Preprocess", variant="primary", elem_id=f"{PREFIX}_start")
    message = gr.HTML("", elem_id=f"{PREFIX}_message")
    job_panel(ctx, PreprocessJob.kind, PREFIX)

    def on_start(*values: Any) -> str:
        try:
            job = job_from_form(dict(zip(names, values)))
            check_folders(job)  # refuse a destination inside the source before anything is queued
        except LiandanError as e:
            return f'<p class="liandan-error">{html.escape(str(e))}</p>'
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    start.click(on_start, [controls[n] for n in names], message, queue=False)
