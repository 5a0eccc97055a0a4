"""The Aesthetic tab, and the "Aesthetic gradients" section of A1111's txt2img/img2img.

- Create: an AestheticJob form (model, name, image folder, batch size, ...), Create, and the shared job
  panel (progress, Interrupt).
- Generate (standalone only; inside the WebUI its own txt2img does this, with the section below): a
  GenerateSpec form (prompt, negative prompt, seed, steps, the aesthetic embedding and its settings) that
  renders one image with our sampler.
- `script_section`: the controls of the WebUI Script (scripts/liandan.py), built from AestheticSettings, in
  the order `SCRIPT_ARGS` names, with the infotext fields that "Send to txt2img" reads back.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.formats.aesthetic import list_aesthetic_embeddings
from liandan.jobs import AestheticJob, AestheticSettings, GenerateSpec
from liandan.models.aesthetic_conditioning import EMBEDDING_LABEL, INFOTEXT_LABELS, NO_AESTHETIC, SCRIPT_ARGS
from liandan.ui.components import UIContext, job_model, job_panel, model_dropdown
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_aesthetic"
GENERATE_PREFIX = "liandan_aesthetic_gen"
SETTINGS = "aesthetic_settings."  # GenerateSpec's section of AestheticSettings


def embedding_choices(folder: Path) -> list[str]:
    return [NO_AESTHETIC, *list_aesthetic_embeddings(folder)]


def settings_controls(f: SpecForm[Any], section: str = "") -> None:
    """The AestheticSettings controls, labelled as the aesthetic-gradients extension labelled them."""
    with gr.Row():
        f.slider(f"{section}weight", "Aesthetic weight", 0, 1, 0.01)
        f.slider(f"{section}steps", "Aesthetic steps", 0, 50, 1)
        f.number(f"{section}learn_rate", "Aesthetic learning rate")
    with gr.Row():
        f.check(f"{section}slerp", "Slerp interpolation")
        f.slider(f"{section}slerp_angle", "Slerp angle", 0, 1, 0.01)
    with gr.Row():
        f.text(f"{section}text", "Aesthetic text", "rotates the target toward this text's feature")
        f.check(f"{section}text_is_negative", "Text is negative (rotate away from it)")


def _embedding_dropdown(folder: Path, elem_id: str) -> tuple[Any, Any]:
    with gr.Row():
        dropdown = gr.Dropdown(embedding_choices(folder), value=NO_AESTHETIC, label="Aesthetic embedding",
                               elem_id=elem_id)  # fmt: skip
        refresh = gr.Button("\U0001f504", elem_id=f"{elem_id}_refresh", scale=0, min_width=40)
    refresh.click(lambda: gr.update(choices=embedding_choices(folder)), None, dropdown, queue=False)
    return dropdown, refresh


def script_section(folder: Path, is_img2img: bool) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """The WebUI Script's controls (values in SCRIPT_ARGS order) and its infotext fields. An infotext
    without our fields sets the embedding back to None, so pasting a plain image's parameters turns it off."""
    prefix = f"{PREFIX}_{'img2img' if is_img2img else 'txt2img'}"
    f = SpecForm(AestheticSettings, prefix)
    with gr.Accordion("Aesthetic gradients", open=False, elem_id=prefix):
        dropdown, _ = _embedding_dropdown(folder, f"{prefix}_embedding")
        settings_controls(f)
    controls = [dropdown, *(f.controls[name] for name in SCRIPT_ARGS[1:])]
    infotext: list[tuple[Any, Any]] = [(dropdown, lambda params: params.get(EMBEDDING_LABEL, NO_AESTHETIC))]
    infotext += [(f.controls[name], label) for name, label in INFOTEXT_LABELS.items()]
    return controls, infotext


def _create_section(ctx: UIContext) -> None:
    f = SpecForm(AestheticJob, PREFIX)
    model = model_dropdown(ctx, PREFIX)
    with gr.Row():
        f.text("name", "Name")
        f.text("folder", "Image folder", "/path/to/pictures")
    with gr.Row():
        f.check("recursive", "Include subfolders")
        f.slider("batch_size", "Batch size", 1, 256, 1)
        f.radio("file_format", "Save as")
    with gr.Row():
        f.check("overwrite", "Overwrite an old embedding")
        f.radio("device", "Device")
        f.check("allow_download", "Download missing CLIP weights")
    with gr.Accordion("More", open=False):
        f.slider("clip_skip", "CLIP skip (not used to create; kept for the job file)", 1, 12, 1)
        f.text("log_dir", "Log folder (empty: the default)")
    paths = list(f.controls)
    create = gr.Button("Create aesthetic embedding", variant="primary", elem_id=f"{PREFIX}_create")
    message = gr.HTML("", elem_id=f"{PREFIX}_message")
    job_panel(ctx, AestheticJob.kind, PREFIX, training=False)

    def on_create(model_title: str, *values: Any) -> str:
        try:
            job = f.to_spec({"model": job_model(model_title), **dict(zip(paths, values))})
        except LiandanError as e:
            return f'<p class="liandan-error">{html.escape(str(e))}</p>'
        job_id = ctx.runner.submit(job)
        return f'<p class="liandan-message">Started {html.escape(job_id)}.</p>'

    create.click(on_create, [model, *(f.controls[p] for p in paths)], message, queue=False)


def _generate_section(ctx: UIContext) -> None:
    from liandan.methods.aesthetic import GenerateSession, generate_image

    f = SpecForm(GenerateSpec, GENERATE_PREFIX)
    model = model_dropdown(ctx, GENERATE_PREFIX)
    f.text("prompt", "Prompt", lines=2)
    f.text("negative_prompt", "Negative prompt")
    with gr.Row():
        f.number("seed", "Seed", precision=0)
        f.slider("steps", "Sampling steps", 1, 150, 1)
        f.slider("cfg_scale", "CFG scale", 1, 30, 0.5)
        f.radio("sampler", "Sampler")
    with gr.Row():
        f.slider("width", "Width", 64, 2048, 8)
        f.slider("height", "Height", 64, 2048, 8)
        f.slider("clip_skip", "CLIP skip", 1, 12, 1)
    folder = ctx.host.folders.aesthetic_embeddings
    dropdown, _ = _embedding_dropdown(folder, f"{GENERATE_PREFIX}_aesthetic")
    f.add("aesthetic", dropdown)
    settings_controls(f, SETTINGS)
    with gr.Row():
        f.check("allow_download", "Download missing CLIP weights")
        f.text("out", "Save to (empty: the log folder's generate/)")
    paths = list(f.controls)
    button = gr.Button("Generate", variant="primary", elem_id=f"{GENERATE_PREFIX}_generate")
    picture = gr.Image(label="Image", type="filepath", elem_id=f"{GENERATE_PREFIX}_image", interactive=False)
    info = gr.HTML("", elem_id=f"{GENERATE_PREFIX}_info")
    session = GenerateSession()  # the model and adapted prompts stay between clicks

    def on_generate(model_title: str, *values: Any) -> tuple[Any, str]:
        data = dict(zip(paths, values))
        if data["aesthetic"] == NO_AESTHETIC:
            data["aesthetic"] = ""
        try:
            spec = f.to_spec({"model": job_model(model_title), **data})
            path = generate_image(spec, ctx.host, session)
        except LiandanError as e:
            return None, f'<p class="liandan-error">{html.escape(str(e))}</p>'
        from PIL import Image

        parameters = Image.open(path).info.get("parameters", "")
        return str(path), f'<pre class="liandan-message">{html.escape(parameters)}</pre>'

    button.click(on_generate, [model, *(f.controls[p] for p in paths)], [picture, info])


def build(ctx: UIContext) -> None:
    with gr.Accordion("Create an aesthetic embedding", open=True):
        gr.Markdown(
            "The mean CLIP image feature of a folder of pictures, with the CLIP vision tower that matches "
            "the model (SD1: ViT-L/14, SD2: OpenCLIP ViT-H/14, SDXL: ViT-L/14 and OpenCLIP ViT-bigG/14), "
            "saved to models/aesthetic_embeddings. Use it in txt2img/img2img's *Aesthetic gradients* section."
        )
        _create_section(ctx)
    if not ctx.in_webui:
        with gr.Accordion("Generate", open=True):
            _generate_section(ctx)
