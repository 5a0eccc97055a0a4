"""The tab list, shared by the standalone app and the A1111 entry script. Each tab is a module with
`build(ctx: UIContext)`, called inside the Blocks; a tab whose module is not there yet shows a notice."""

from __future__ import annotations

import html
import importlib
import importlib.util
import logging
from dataclasses import dataclass

import gradio as gr

from liandan.ui.components import UIContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TabDef:
    key: str  # elem_id stem: liandan_tab_<key>
    title: str
    module: str


TABS: tuple[TabDef, ...] = (
    TabDef("textual_inversion", "Textual Inversion", "liandan.ui.textual_inversion_tab"),
    TabDef("hypernetwork", "Hypernetwork", "liandan.ui.hypernetwork_tab"),
    TabDef("preprocess", "Preprocess & Caption", "liandan.ui.preprocess_tab"),
    TabDef("dreambooth", "DreamBooth / LoRA", "liandan.ui.dreambooth_tab"),
    TabDef("apt", "APT", "liandan.ui.apt_tab"),
    TabDef("aesthetic", "Aesthetic", "liandan.ui.aesthetic_tab"),
)


def build_tabs(ctx: UIContext) -> None:
    """All tabs, inside the current Blocks."""
    with gr.Tabs(elem_id="liandan_tabs"):
        for tab in TABS:
            with gr.Tab(tab.title, id=tab.key, elem_id=f"liandan_tab_{tab.key}"):
                build_tab(tab, ctx)


def build_tab(tab: TabDef, ctx: UIContext) -> None:
    if importlib.util.find_spec(tab.module) is None:
        gr.Markdown(
            f"The {tab.title} tab is not part of this build yet.", elem_id=f"liandan_{tab.key}_missing"
        )
        return
    try:
        importlib.import_module(tab.module).build(ctx)
    except Exception as e:  # one broken tab must not take the others (or the WebUI's UI) down
        log.exception("liandan: the %s tab failed to build", tab.title)
        message = html.escape(f"{type(e).__name__}: {e}")
        gr.HTML(
            f'<p class="liandan-error">The {tab.title} tab failed to load: {message} '
            "(details in the console)</p>",
            elem_id=f"liandan_{tab.key}_failed",
        )
