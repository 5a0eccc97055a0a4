"""A1111 entry point: the liandan tab, its settings and REST routes, and the "Aesthetic gradients" section
of txt2img/img2img.

A1111 imports this file with the extension root on sys.path only during the import, so the `liandan`
package is imported here at the top; its submodules stay importable later through the package's own path.
A UI reload runs this file again: the job queue lives in `liandan.host.webui`, so jobs survive it. The one
patch we make (the aesthetic wrapper around the model's conditioning, for one generation at a time) is
undone after each generation and on `on_script_unloaded`.
"""

from __future__ import annotations

from typing import Any

from modules import script_callbacks, scripts, shared

# every liandan module used later is imported now, while the extension root is on sys.path
import liandan.host.webui
import liandan.job_runner
import liandan.registry
import liandan.rest
import liandan.ui.aesthetic_tab
import liandan.ui.app
import liandan.ui.components

SECTION = ("liandan", "Liandan")
runner = liandan.host.webui.webui_runner


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    job_runner = runner()
    ctx = liandan.ui.components.UIContext(host=job_runner.host, runner=job_runner, in_webui=True)
    # A1111 injects style.css and javascript/liandan.js itself; the tab gets elem_id "tab_liandan"
    return [(liandan.ui.app.build_ui(ctx), "Liandan", "liandan")]


def on_ui_settings() -> None:
    shared.opts.add_option(
        liandan.host.webui.LOG_DIR_OPTION,
        shared.OptionInfo(
            "textual_inversion",
            "Log directory of training jobs (relative to the WebUI data folder)",
            section=SECTION,
        ),
    )
    shared.opts.add_option(
        liandan.host.webui.UNLOAD_OPTION,
        shared.OptionInfo(
            True,
            "Move the WebUI's model to RAM while training (turn off only with VRAM to spare)",
            section=SECTION,
        ),
    )


def on_app_started(demo: Any, app: Any) -> None:
    """The REST routes (liandan/rest.py). They read and write any folder, so like A1111's own API they exist
    only with --api (or --nowebui, where `demo` is None), behind --api-auth when it is set: gradio's login
    never covers routes added to its app."""
    if demo is not None and not getattr(shared.cmd_opts, "api", False):
        return
    auth = liandan.rest.basic_auth(getattr(shared.cmd_opts, "api_auth", None))
    app.include_router(liandan.rest.build_router(runner, auth))


class AestheticGradients(scripts.Script):
    """Always visible in txt2img and img2img; over the API: `"alwayson_scripts": {"aesthetic gradients":
    {"args": [embedding, weight, steps, learn_rate, slerp, slerp_angle, text, text_is_negative]}}`."""

    def title(self) -> str:
        return "Aesthetic gradients"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        folder = runner().host.folders.aesthetic_embeddings
        controls, self.infotext_fields = liandan.ui.aesthetic_tab.script_section(folder, is_img2img)
        self.paste_field_names = [label for _, label in self.infotext_fields if isinstance(label, str)]
        return controls

    def process(self, p: Any, *args: Any) -> None:
        liandan.host.webui.aesthetic_process(p, *args)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        liandan.host.webui.restore_conditioning()


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_script_unloaded(liandan.host.webui.restore_conditioning)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
