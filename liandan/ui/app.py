"""The liandan UI as one gr.Blocks: the standalone app (`python -m liandan ui`) and, through
scripts/liandan.py, the tab inside A1111 are built by the same `build_ui`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from liandan.host.base import Host
from liandan.job_runner import JobRunner
from liandan.ui.components import UIContext, start_polling
from liandan.ui.tabs import build_tabs

STYLE_CSS = Path(__file__).resolve().parents[2] / "style.css"  # the extension's; A1111 injects it itself
QUEUE_SLOTS = 16  # the status poll holds one slot per open page; clicks need the others


def build_ui(ctx: UIContext, css: str | None = None) -> gr.Blocks:
    with gr.Blocks(analytics_enabled=False, title="liandan", css=css) as ui:
        build_tabs(ctx)
        start_polling(ctx, ui)
    return ui


def build_app(host: Host, runner: JobRunner) -> gr.Blocks:
    """The standalone app: every tab, with the extension's style sheet."""
    css = STYLE_CSS.read_text(encoding="utf-8") if STYLE_CSS.is_file() else None
    return build_ui(UIContext(host=host, runner=runner), css=css)


def serve(app: gr.Blocks, port: int, listen: bool = False, block: bool = True) -> Any:
    """Launch on 127.0.0.1 (all interfaces with `listen`). Queue arguments differ between Gradio 3 and 4."""
    if int(gr.__version__.split(".")[0]) < 4:
        app.queue(concurrency_count=QUEUE_SLOTS, api_open=False)
    else:  # pragma: no cover - newer Gradio
        app.queue(default_concurrency_limit=QUEUE_SLOTS, api_open=False)
    return app.launch(
        server_name="0.0.0.0" if listen else "127.0.0.1",
        server_port=port,
        prevent_thread_lock=not block,
        show_api=False,
        inbrowser=False,
    )
