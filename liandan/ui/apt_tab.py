"""The APT tab: Create the pair (`name` and `name-neg`), Train with APT's own settings (CFG scale or range,
negative learning-rate factor, reconstruction loss, attention maps, EMA, discriminator), and the shared job
panel (progress, loss, previews with the pair on and off, Interrupt, Resume), laid out by `ui/sections.py`
from AptJob's fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from liandan.jobs import AptJob
from liandan.ui.components import UIContext
from liandan.ui.sections import TrainingTab, build_training_tab
from liandan.ui.spec_form import SpecForm
from liandan.ui.textual_inversion_tab import embedding_names

PREFIX = "liandan_apt"
NEG_SUFFIX = "-neg"


def job_from_form(values: dict[str, Any]) -> AptJob:
    """Widget values by field path → a validated job."""
    return SpecForm(AptJob, PREFIX).to_spec(values)


def pair_names(ctx: UIContext) -> list[str]:
    """The APT pairs in the embeddings folder, by the positive's name (`x` where `x-neg` exists too)."""
    names = set(embedding_names(ctx))
    return sorted(n for n in names if f"{n}{NEG_SUFFIX}" in names)


def _create_controls(f: SpecForm[Any]) -> None:
    f.text("name", "Name (the negative is <name>-neg)")
    f.text("init_text", "Initialization text (positive)")
    f.slider("vectors", "Vectors per token (positive)", 1, 75, 1)
    f.text("neg_init_text", "Initialization text (negative; empty: zeros)")
    f.slider("neg_vectors", "Vectors per token (negative)", 1, 75, 1)
    f.check("overwrite", "Overwrite an old pair")
    f.radio("file_format", "Save as (Create and Train)")


def _create(host: Any, job: AptJob) -> Path:
    from liandan.methods.apt import create_apt_pair

    return create_apt_pair(host, job)


def _train_controls(f: SpecForm[Any]) -> None:
    with gr.Accordion("APT", open=True):
        with gr.Row():
            f.text("cfg_scale", "CFG scale in the loss: 5, or a range drawn each step 3-5, or 3-5:cos")
            f.auto("neg_lr_scale", "Learning-rate factor of the negative")
            f.auto("ema_decay", "EMA decay of the saved vectors (0: off)")
        with gr.Row():
            f.auto("reconstruction_weight", "Reconstruction loss weight (0: off; decodes with the VAE)")
            f.check("attention_maps", "Weight the loss by <image>_att.png attention maps")
            f.check("save_png_cards", "Save embedding PNG cards")
        with gr.Row():
            f.auto("discriminator", "Discriminator checkpoint (.safetensors/.pt state dict; empty: none)")
            f.auto("discriminator_arch", "Discriminator architecture (torchvision, one output)")
            f.auto("discriminator_weight", "Discriminator loss weight")


TAB = TrainingTab(
    prefix=PREFIX,
    spec=AptJob,
    noun="APT pair",
    create_controls=_create_controls,
    create=_create,
    names=pair_names,
    own_train_controls=_train_controls,
    labels={
        "train.learn_rate": "Embedding learning rate (0.0025 or 0.1:500, 0.01)",
        "preview.negative_prompt": "Negative prompt (with the pair, <name>-neg is added)",
    },
)


def build(ctx: UIContext) -> None:
    build_training_tab(ctx, TAB)
