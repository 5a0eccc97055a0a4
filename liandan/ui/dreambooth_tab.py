"""DreamBooth / LoRA: not built yet. The tab says so rather than showing controls that do nothing."""

from __future__ import annotations

import gradio as gr

from liandan.ui.components import UIContext


def build(ctx: UIContext) -> None:
    gr.Markdown(
        "**DreamBooth / LoRA training is not in this release.** It is planned for a later one: fine-tuning "
        "a checkpoint (saved to models/Stable-diffusion) or training a LoRA (kohya format, saved to "
        "models/Lora). Until then, Textual Inversion and Hypernetwork training are available.",
        elem_id="liandan_dreambooth_notice",
    )
