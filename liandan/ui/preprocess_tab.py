"""The "Preprocess & caption" tab: a PreprocessJob form, a Start button, and the shared job status panel.

Each control is keyed by its PreprocessJob field name, so the form and the spec cannot drift apart.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.preprocess.batch import check_folders
from liandan.preprocess.job import PreprocessJob
from liandan.ui.components import UIContext, job_panel
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_preprocess"
CAPTIONER_LABELS = {
    "deepbooru": "Deepbooru",
    "blip": "BLIP",
    "wd14": "WD14",
    "deepdanbooru": "DeepDanbooru project",
}


def _form() -> SpecForm[PreprocessJob]:
    return SpecForm(PreprocessJob, PREFIX)


def job_from_form(values: dict[str, Any]) -> PreprocessJob:
    """Widget values → spec: ints from sliders, checkbox labels → captioner names, "" → no project."""
    by_label = {label: key for key, label in CAPTIONER_LABELS.items()}
    if "captioners" in values:
        values = {**values, "captioners": [by_label[label] for label in values["captioners"]]}
    return _form().to_spec(values)


def _controls() -> dict[str, Any]:
    f = _form()
    with gr.Row():
        f.text("source", "Source folder (only read)", "/path/to/pictures")
        f.text("destination", "Destination folder", "/path/to/dataset")
    with gr.Row():
        f.check("recursive", "Include subfolders")
        f.check("in_place_captions", "Captions only, written beside the source images")
    with gr.Accordion("Image operations", open=True):
        with gr.Row():
            f.slider("width", "Width", 64, 2048, 8)
            f.slider("height", "Height", 64, 2048, 8)
        with gr.Row():
            f.radio("resize_mode", "Resize")
            f.radio("flip", "Create flipped copies")
            f.radio("output_format", "Save as")
        with gr.Row():
            f.check("split_oversized", "Split oversized images")
            f.slider("split_threshold", "Split threshold", 0, 1, 0.05)
            f.slider("overlap_ratio", "Overlap ratio", 0, 0.9, 0.05)
        f.radio("crop", "Crop (instead of resize)")
        with gr.Row():
            f.slider("focal_face_weight", "Focal point: face weight", 0, 1, 0.05)
            f.slider("focal_entropy_weight", "Focal point: entropy weight", 0, 1, 0.05)
            f.slider("focal_edges_weight", "Focal point: edges weight", 0, 1, 0.05)
            f.check("focal_debug", "Save focal debug images")
        with gr.Row():
            f.slider("autosize_min_dim", "Auto size: dimension lower bound", 64, 2048, 64)
            f.slider("autosize_max_dim", "Auto size: dimension upper bound", 64, 2048, 64)
            f.slider("autosize_min_area", "Area lower bound", 4096, 4194304, 1)
            f.slider("autosize_max_area", "Area upper bound", 4096, 4194304, 1)
        with gr.Row():
            f.radio("autosize_objective", "Auto size objective")
            f.slider("autosize_error_threshold", "Error threshold", 0, 1, 0.01)
    with gr.Accordion("Captions", open=True):
        labels = list(CAPTIONER_LABELS.values())
        f.add("captioners", gr.CheckboxGroup(labels, value=[], label="Captioners (joined)",
                                             elem_id=f.elem_id("captioners")))  # fmt: skip
        with gr.Row():
            f.radio("existing_caption", "Existing caption")
            f.check("caption_in_filename", "Caption in the file name instead of .txt")
        with gr.Row():
            f.slider("tag_threshold", "Deepbooru score threshold (guides: 0.75)", 0, 1, 0.01)
            f.radio("tag_sort", "Sort tags")
            f.text("tag_filter", "Filter out tags", "comma-separated")
        with gr.Row():
            f.check("tag_use_spaces", "Spaces instead of underscores")
            f.check("tag_escape_brackets", "Escape brackets")
            f.check("tag_drop_rating", "Drop rating: tags")
            f.check("tag_include_scores", "Include scores")
        f.text("deepdanbooru_project", "DeepDanbooru project folder (optional extra)")
        with gr.Row():
            f.text("blip_model", "BLIP model (repository or folder)")
            f.slider("blip_num_beams", "BLIP beams", 1, 16, 1)
            f.slider("blip_min_length", "BLIP min length", 0, 128, 1)
            f.slider("blip_max_length", "BLIP max length", 1, 256, 1)
        with gr.Row():
            f.text("wd14_model", "WD14 model (repository or folder)")
            f.slider("wd14_general_threshold", "WD14 general threshold", 0, 1, 0.01)
            f.slider("wd14_character_threshold", "Character threshold", 0, 1, 0.01)
        with gr.Row():
            f.check("wd14_rating_tags", "WD14 rating tag")
            f.check("wd14_character_first", "Character tags first")
            f.text("wd14_exclude_tags", "WD14 excluded tags", "comma-separated")
    with gr.Row():
        f.radio("device", "Device")
        f.slider("batch_size", "Caption batch size", 1, 64, 1)
        f.check("allow_download", "Download missing weights")
    return f.controls


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
