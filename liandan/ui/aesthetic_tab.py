"""Aesthetic gradients: not built yet. The tab says so rather than showing controls that do nothing."""

from __future__ import annotations

import gradio as gr

from liandan.ui.components import UIContext


def build(ctx: UIContext) -> None:
    gr.Markdown(
        "**Aesthetic embeddings are not in this release.** It is planned for a later one: creating an "
        "aesthetic embedding from a folder of images (saved to models/aesthetic_embeddings) and applying it "
        "in txt2img/img2img.",
        elem_id="liandan_aesthetic_notice",
    )
