"""The liandan UI as one gr.Blocks: the standalone app (`python -m liandan ui`) and, through
scripts/liandan.py, the tab inside A1111 are built by the same `build_ui`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from liandan.host.base import Host
from liandan.job_runner import JobRunner
from liandan.rest import build_router, token_auth
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


def serve(app: gr.Blocks, runner: JobRunner, port: int, token: str | None = None, block: bool = True) -> Any:
    """Launch the UI and the REST routes (liandan/rest.py) on 127.0.0.1; with a `token`, on all interfaces,
    the UI behind a login (user "liandan", the token as password) and the routes behind the bearer token.
    The routes go into the server's FastAPI app as it is built, so they answer from its first request (added
    after `launch`, they were missing for a moment while the UI already served). Queue arguments differ
    between Gradio 3 and 4."""
    if int(gr.__version__.split(".")[0]) < 4:
        app.queue(concurrency_count=QUEUE_SLOTS, api_open=False)
    else:  # pragma: no cover - newer Gradio
        app.queue(default_concurrency_limit=QUEUE_SLOTS, api_open=False)
    server, _local_url, _share_url = app.launch(
        server_name="0.0.0.0" if token else "127.0.0.1",
        server_port=port,
        auth=("liandan", token) if token else None,
        prevent_thread_lock=True,
        show_api=False,
        inbrowser=False,
        app_kwargs={"routes": build_router(lambda: runner, token_auth(token)).routes},
    )
    if block:
        app.block_thread()
    return server
