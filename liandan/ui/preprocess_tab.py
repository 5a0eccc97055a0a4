"""The "Preprocess & caption" tab: a PreprocessJob form, a Start button, and the shared job status panel.

Each control is keyed by its PreprocessJob field name, so the form and the spec cannot drift apart.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.preprocess.batch import check_folders
from liandan.preprocess.job import LABELS, PreprocessJob
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
        f.text("source", LABELS["source"], "/path/to/pictures")
        f.text("destination", LABELS["destination"], "/path/to/dataset")
    with gr.Row():
        f.check("recursive", LABELS["recursive"])
        f.check("in_place_captions", LABELS["in_place_captions"])
    with gr.Accordion("Image operations", open=True):
        with gr.Row():
            f.slider("width", LABELS["width"], 64, 2048, 8)
            f.slider("height", LABELS["height"], 64, 2048, 8)
        with gr.Row():
            f.radio("resize_mode", LABELS["resize_mode"])
            f.radio("flip", LABELS["flip"])
            f.radio("output_format", LABELS["output_format"])
        with gr.Row():
            f.check("split_oversized", LABELS["split_oversized"])
            f.slider("split_threshold", LABELS["split_threshold"], 0, 1, 0.05)
            f.slider("overlap_ratio", LABELS["overlap_ratio"], 0, 0.9, 0.05)
        f.radio("crop", LABELS["crop"])
        with gr.Row():
            f.slider("focal_face_weight", LABELS["focal_face_weight"], 0, 1, 0.05)
            f.slider("focal_entropy_weight", LABELS["focal_entropy_weight"], 0, 1, 0.05)
            f.slider("focal_edges_weight", LABELS["focal_edges_weight"], 0, 1, 0.05)
            f.check("focal_debug", LABELS["focal_debug"])
        with gr.Row():
            f.slider("autosize_min_dim", LABELS["autosize_min_dim"], 64, 2048, 64)
            f.slider("autosize_max_dim", LABELS["autosize_max_dim"], 64, 2048, 64)
            f.slider("autosize_min_area", LABELS["autosize_min_area"], 4096, 4194304, 1)
            f.slider("autosize_max_area", LABELS["autosize_max_area"], 4096, 4194304, 1)
        with gr.Row():
            f.radio("autosize_objective", LABELS["autosize_objective"])
            f.slider("autosize_error_threshold", LABELS["autosize_error_threshold"], 0, 1, 0.01)
    with gr.Accordion("Captions", open=True):
        labels = list(CAPTIONER_LABELS.values())
        f.add("captioners", gr.CheckboxGroup(labels, value=[], label=LABELS["captioners"],
                                             elem_id=f.elem_id("captioners")))  # fmt: skip
        with gr.Row():
            f.radio("existing_caption", LABELS["existing_caption"])
            f.check("caption_in_filename", LABELS["caption_in_filename"])
        with gr.Row():
            f.slider("tag_threshold", LABELS["tag_threshold"], 0, 1, 0.01)
            f.radio("tag_sort", LABELS["tag_sort"])
            f.text("tag_filter", LABELS["tag_filter"], "comma-separated")
        with gr.Row():
            f.check("tag_use_spaces", LABELS["tag_use_spaces"])
            f.check("tag_escape_brackets", LABELS["tag_escape_brackets"])
            f.check("tag_drop_rating", LABELS["tag_drop_rating"])
            f.check("tag_include_scores", LABELS["tag_include_scores"])
        f.text("deepdanbooru_project", LABELS["deepdanbooru_project"])
        with gr.Row():
            f.text("blip_model", LABELS["blip_model"])
            f.slider("blip_num_beams", LABELS["blip_num_beams"], 1, 16, 1)
            f.slider("blip_min_length", LABELS["blip_min_length"], 0, 128, 1)
            f.slider("blip_max_length", LABELS["blip_max_length"], 1, 256, 1)
        with gr.Row():
            f.text("wd14_model", LABELS["wd14_model"])
            f.slider("wd14_general_threshold", LABELS["wd14_general_threshold"], 0, 1, 0.01)
            f.slider("wd14_character_threshold", LABELS["wd14_character_threshold"], 0, 1, 0.01)
        with gr.Row():
            f.check("wd14_rating_tags", LABELS["wd14_rating_tags"])
            f.check("wd14_character_first", LABELS["wd14_character_first"])
            f.text("wd14_exclude_tags", LABELS["wd14_exclude_tags"], "comma-separated")
    with gr.Row():
        f.radio("device", LABELS["device"])
        f.slider("batch_size", LABELS["batch_size"], 1, 64, 1)
        f.check("allow_download", LABELS["allow_download"])
    return f.controls


def build(ctx: UIContext) -> None:
    controls = _controls()
    names = list(controls)
    with gr.Row():
        start = gr.Button("Preprocess", variant="primary", elem_id=f"{PREFIX}_start")
    message = gr.HTML("", elem_id=f"{PREFIX}_message")
    job_panel(ctx, PreprocessJob.kind, PREFIX, training=False)

    def on_start(*values: Any) -> str:
        try:
            job = job_from_form(dict(zip(names, values)))
            check_folders(job)  # refuse a destination inside the source before anything is queued
        except LiandanError as e:
            return f'<p class="liandan-error">{html.escape(str(e))}</p>'
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    start.click(on_start, [controls[n] for n in names], message, queue=False)
