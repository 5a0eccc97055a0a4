"""script_callbacks: registrars keep callbacks per category; tests call them like the WebUI does."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

callbacks: dict[str, list[Callable]] = defaultdict(list)


def clear_callbacks() -> None:
    callbacks.clear()


def _registrar(category: str) -> Callable:
    def register(callback: Callable, *, name: str | None = None) -> None:
        callbacks[category].append(callback)

    register.__name__ = f"on_{category}"
    return register


on_ui_tabs = _registrar("ui_tabs")
on_ui_settings = _registrar("ui_settings")
on_app_started = _registrar("app_started")
on_script_unloaded = _registrar("script_unloaded")
on_model_loaded = _registrar("model_loaded")
