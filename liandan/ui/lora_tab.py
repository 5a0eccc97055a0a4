"""The LoRA tab: the network (type, rank, alpha, convolutions, dropouts, targets, per-block ranks, text
encoders and their learning rate, file precision), the shared training/dataset/preview sections and job
panel laid out by `ui/sections.py` from LoraJob's fields, and the tools (merge, extract, resize, info)."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from liandan.errors import LiandanError
from liandan.jobs import LoraJob
from liandan.ui.components import CURRENT_MODEL, UIContext, job_model
from liandan.ui.concepts import concepts_controls, parse_concepts
from liandan.ui.sections import TrainingTab, build_training_tab
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_lora"


def job_from_form(values: dict[str, Any]) -> LoraJob:
    """Widget values by field path → a validated job."""
    return SpecForm(LoraJob, PREFIX).to_spec(values)


def lora_names(ctx: UIContext) -> list[str]:
    folder = ctx.host.folders.lora
    return sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def _network_controls(f: SpecForm[Any]) -> None:
    with gr.Row():
        f.text("name", "Name (the file in the Lora folder; used as <lora:name:1>)")
        f.auto("network.type", "Network type (LoCon/LoHa/LoKr also train convolutions)")
        f.auto("network.targets", "Targets (attention; transformer: also feed-forward and projections)")
    with gr.Row():
        f.auto("network.rank", "Rank (dim)")
        f.auto("network.alpha", "Alpha (the delta is scaled by alpha / rank)")
        f.auto("network.conv_rank", "Convolution rank (LoCon/LoHa/LoKr; 0: none)")
        f.auto("network.conv_alpha", "Convolution alpha")
    with gr.Row():
        f.auto("network.dropout", "Dropout (LoRA/LoCon)")
        f.auto("network.rank_dropout", "Rank dropout")
        f.auto("network.module_dropout", "Module dropout")
        f.auto("network.lokr_factor", "LoKr factor (-1: automatic)")
    with gr.Row():
        f.text("network.block_ranks", "Per-block UNet ranks (LDM names; 0 leaves a block out)",
               placeholder="input_blocks_4=8, middle_block=16, output_blocks=2")  # fmt: skip
        f.auto("text_encoder_lr_scale", "Text-encoder learning rate factor (0: UNet only)")
        f.auto("save_precision", "Save precision")
        f.check("overwrite", "Overwrite an existing LoRA of that name")


TAB = TrainingTab(
    prefix=PREFIX,
    spec=LoraJob,
    noun="LoRA",
    create_controls=_network_controls,
    create=None,
    names=lora_names,
    own_train_controls=concepts_controls,
    labels={"train.learn_rate": "Learning rate (0.0001, or a schedule 0.0002:500, 0.0001)"},
    parse_form=parse_concepts,
)


def _tool_message(run: Callable[[], str]) -> str:
    try:
        return f'<p class="liandan-message">{html.escape(run())}</p>'
    except LiandanError as e:
        return f'<p class="liandan-error">{html.escape(str(e))}</p>'


def _tools(ctx: UIContext) -> None:
    """Merge, extract, resize and info, on the LoRA folder's files and the host's checkpoints; what they
    write lands in the LoRA or checkpoints folder and is refreshed there."""
    from liandan.formats import lora_tools

    host = ctx.host

    def lora(name: str) -> Path:
        return host.folders.lora / f"{name}.safetensors"

    def checkpoint(title: str) -> Path:
        return host.resolve_checkpoint(job_model(title)).path

    def merge(name: str, title: str, weight: float, out: str) -> str:
        target = host.folders.checkpoints / f"{out or name + '-merged'}.safetensors"
        result = lora_tools.merge_lora(lora(name), checkpoint(title), target, float(weight))
        host.refresh("checkpoints")
        ctx.on_checkpoints_changed()
        return f"wrote {result.path} ({result.changed} layers changed, {len(result.skipped)} keys unused)"

    def extract(base: str, tuned: str, rank: float, conv_rank: float, out: str) -> str:
        path = lora_tools.extract_lora(checkpoint(base), checkpoint(tuned), lora(out or "extracted"),
                                       int(rank), int(conv_rank))  # fmt: skip
        host.refresh("lora")
        return f"wrote {path}"

    def resize(name: str, rank: float, out: str) -> str:
        path = lora_tools.resize_lora(lora(name), lora(out or f"{name}-r{int(rank)}"), int(rank))
        host.refresh("lora")
        return f"wrote {path}"

    def info(name: str) -> str:
        return json.dumps(lora_tools.describe_lora(lora(name)), indent=1)

    checkpoints = ctx.checkpoint_choices()
    with gr.Accordion("Tools", open=False):
        with gr.Row():
            name = gr.Dropdown(
                lora_names(ctx), label="LoRA", allow_custom_value=True, elem_id=f"{PREFIX}_tool_lora"
            )
            out = gr.Textbox("", label="Output name (empty: derived)", elem_id=f"{PREFIX}_tool_out")
            rank = gr.Number(8, label="Rank (extract, resize)", precision=0, elem_id=f"{PREFIX}_tool_rank")
            conv_rank = gr.Number(
                0, label="Conv rank (extract)", precision=0, elem_id=f"{PREFIX}_tool_conv_rank"
            )
        with gr.Row():
            base = gr.Dropdown([CURRENT_MODEL, *checkpoints], value=CURRENT_MODEL, label="Checkpoint (merge; "
                               "extract: base)", elem_id=f"{PREFIX}_tool_base")  # fmt: skip
            tuned = gr.Dropdown(
                checkpoints, label="Tuned checkpoint (extract)", elem_id=f"{PREFIX}_tool_tuned"
            )
            weight = gr.Number(1.0, label="Weight (merge)", elem_id=f"{PREFIX}_tool_weight")
        with gr.Row():
            buttons = {label: gr.Button(label, elem_id=f"{PREFIX}_tool_{label.lower()}")
                       for label in ("Merge", "Extract", "Resize", "Info")}  # fmt: skip
        message = gr.HTML("", elem_id=f"{PREFIX}_tool_message")
    wiring = {
        "Merge": (merge, [name, base, weight, out]),
        "Extract": (extract, [base, tuned, rank, conv_rank, out]),
        "Resize": (resize, [name, rank, out]),
        "Info": (info, [name]),
    }
    for label, (tool, inputs) in wiring.items():
        buttons[label].click(
            lambda *values, tool=tool: _tool_message(lambda: tool(*values)), inputs, message, queue=False
        )


def build(ctx: UIContext) -> None:
    build_training_tab(ctx, TAB)
    _tools(ctx)
