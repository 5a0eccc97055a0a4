"""The tab list, shared by the standalone app and the A1111 entry script: one tab per registry entry that
has one (`liandan.registry`). Each tab is a module with
`build(ctx: UIContext)`, called inside the Blocks."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass

import gradio as gr

from liandan import registry
from liandan.ui.components import UIContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TabDef:
    key: str  # elem_id stem: liandan_tab_<key>
    title: str
    module: str


def tab_list() -> list[TabDef]:
    return [TabDef(m.kind, m.title, m.tab) for m in registry.METHODS.values() if m.tab is not None]


def build_tabs(ctx: UIContext) -> None:
    """All tabs, inside the current Blocks."""
    with gr.Tabs(elem_id="liandan_tabs"):
        for tab in tab_list():
            with gr.Tab(tab.title, id=tab.key, elem_id=f"liandan_tab_{tab.key}"):
                build_tab(tab, ctx)


def build_tab(tab: TabDef, ctx: UIContext) -> None:
    try:
        registry.import_optional(tab.module, f"the {tab.title} tab").build(ctx)
    except registry.MethodUnavailable as e:  # an optional package is missing: say which, no traceback
        log.warning("liandan: %s", e)
        gr.HTML(
            f'<p class="liandan-error">{html.escape(str(e))}</p>', elem_id=f"liandan_{tab.key}_unavailable"
        )
    except Exception as e:  # one broken tab must not take the others (or the WebUI's UI) down
        log.exception("liandan: the %s tab failed to build", tab.title)
        message = html.escape(f"{type(e).__name__}: {e}")
        gr.HTML(
            f'<p class="liandan-error">The {tab.title} tab failed to load: {message} '
            "(details in the console)</p>",
            elem_id=f"liandan_{tab.key}_failed",
        )
