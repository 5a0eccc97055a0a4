"""APT: not built yet. The tab says so rather than showing controls that do nothing."""

from __future__ import annotations

import gradio as gr

from liandan.ui.components import UIContext


def build(ctx: UIContext) -> None:
    gr.Markdown(
        "**APT (paired positive/negative embedding training) is not in this release.** It is planned for a "
        "later one; its embeddings will be saved to the embeddings folder like textual inversion's.",
        elem_id="liandan_apt_notice",
    )
