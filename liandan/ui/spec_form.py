"""Gradio controls keyed by a job-spec field path ("name", "train.max_steps", "data.folder"), with their
default read from the spec and their elem_id made from the path, and the way back: submitted values to
one validated spec. A tab that builds its form this way cannot drift from the spec it submits.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Generic, TypeVar

import gradio as gr

from liandan.errors import ConfigError
from liandan.jobs import Spec

S = TypeVar("S", bound=Spec)


class SpecForm(Generic[S]):
    """The controls of one form over `spec_class`, in the order they were built (`controls`).

    Several forms may share a spec class and prefix (a tab's Create and Train sections): each collects its
    own controls, and `to_spec` accepts any field path of the spec.
    """

    def __init__(self, spec_class: type[S], prefix: str) -> None:
        self.spec_class = spec_class
        self.prefix = prefix
        self.controls: dict[str, Any] = {}
        self._defaults = spec_class()

    # --- what a path means ------------------------------------------------------------------------

    def hint(self, path: str) -> Any:
        """The declared type of a field path; ConfigError for a path the spec does not have."""
        owner: Any = self.spec_class
        for part in path.split("."):
            is_spec = isinstance(owner, type) and issubclass(owner, Spec)
            hints = typing.get_type_hints(owner) if is_spec else {}  # a section is a Spec, a leaf is not
            if part not in hints:
                raise ConfigError(f"{self.spec_class.__name__} has no setting {path!r}")
            owner = hints[part]
        return owner

    def default(self, path: str) -> Any:
        self.hint(path)  # refuse an unknown path before walking into it
        value: Any = self._defaults
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def elem_id(self, path: str) -> str:
        return f"{self.prefix}_{path.replace('.', '_')}"

    # --- controls ---------------------------------------------------------------------------------

    def add(self, path: str, control: Any) -> Any:
        """Collect a control built elsewhere (custom choices or value) under its field path."""
        self.hint(path)
        self.controls[path] = control
        return control

    def text(self, path: str, label: str, placeholder: str = "", **options: Any) -> Any:
        value = self.default(path)
        unset = value is None or value == Path()  # a folder not chosen yet shows empty, not "."
        return self.add(
            path,
            gr.Textbox(
                "" if unset else str(value),
                label=label,
                placeholder=placeholder,
                elem_id=self.elem_id(path),
                **options,
            ),
        )

    def number(self, path: str, label: str, **options: Any) -> Any:
        return self.add(
            path, gr.Number(self.default(path), label=label, elem_id=self.elem_id(path), **options)
        )

    def slider(self, path: str, label: str, minimum: float, maximum: float, step: float) -> Any:
        return self.add(
            path,
            gr.Slider(
                minimum, maximum, value=self.default(path), step=step, label=label, elem_id=self.elem_id(path)
            ),
        )

    def check(self, path: str, label: str) -> Any:
        return self.add(path, gr.Checkbox(value=self.default(path), label=label, elem_id=self.elem_id(path)))

    def radio(self, path: str, label: str) -> Any:
        """One of a Literal field's choices, as radio buttons."""
        return self.add(
            path,
            gr.Radio(self.choices(path), value=self.default(path), label=label, elem_id=self.elem_id(path)),
        )

    def dropdown(self, path: str, label: str, choices: list[Any] | None = None) -> Any:
        """A dropdown of `choices`, or of a Literal field's choices when none are given."""
        options = self.choices(path) if choices is None else choices
        return self.add(
            path, gr.Dropdown(options, value=self.default(path), label=label, elem_id=self.elem_id(path))
        )

    def choices(self, path: str) -> list[Any]:
        return list(typing.get_args(self.hint(path)))

    # --- the way back -----------------------------------------------------------------------------

    def to_spec(self, values: dict[str, Any]) -> S:
        """Widget values by field path → a validated spec. Gradio numbers become the field's int/float, ""
        becomes None for an optional field, list items of a tuple[int, ...] become ints; fields left out keep
        the spec's defaults (a partial section keeps this spec's own section defaults)."""
        data: dict[str, Any] = {}
        for path, value in values.items():
            node = data
            *sections, leaf = path.split(".")
            for part in sections:
                node = node.setdefault(part, {})
            node[leaf] = _from_widget(path, value, self.hint(path))
        return self.spec_class.from_dict(data)


def _from_widget(path: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    if value == "" and type(None) in args:
        return None
    try:
        if hint is int and value is not None:
            return int(value)
        if hint is float and value is not None:
            return float(value)
        if typing.get_origin(hint) is tuple and args[0] is int and isinstance(value, list | tuple):
            return [int(v) for v in value]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path} = {value!r}: expected {'numbers' if args else 'a number'}") from e
    return value
