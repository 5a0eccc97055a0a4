"""Gradio controls keyed by a job-spec field path ("name", "train.max_steps", "data.folder"), with their
default read from the spec and their elem_id made from the path, and the way back: submitted values to
one validated spec. A tab that builds its form this way cannot drift from the spec it submits.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Generic, TypeVar

import gradio as gr

from liandan.errors import ConfigError
from liandan.spec import Spec

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
        """The field's default; read from the fields, since a spec with required values (a name) has no
        valid default instance."""
        self.hint(path)  # refuse an unknown path before walking into it
        first, *rest = path.split(".")
        field = next(f for f in dataclasses.fields(self.spec_class) if f.name == first)
        value: Any = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        for part in rest:
            value = getattr(value, part)
        return value

    def elem_id(self, path: str) -> str:
        return f"{self.prefix}_{path.replace('.', '_')}"

    # --- controls ---------------------------------------------------------------------------------

    def add(self, path: str, control: Any) -> Any:
        """Collect a control built elsewhere (custom choices or value) under its field path."""
        self.hint(path)
        # A1111 saves and restores tab defaults (ui-config.json) keyed by tab and label only, so the TI and
        # hypernetwork tabs' "Prompt template" would share one value; this attribute adds our prefix
        control.custom_script_source = self.prefix
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

    def auto(self, path: str, label: str) -> Any:
        """The control a field's type calls for: a dropdown of a Literal's choices, a checkbox for a bool, a
        slider for a probability (a float bounded by [0, 1]), a number, else a text box."""
        hint = self.hint(path)
        if typing.get_origin(hint) is typing.Literal:
            return self.dropdown(path, label)
        if hint is bool:
            return self.check(path, label)
        if hint is float and self._bounds(path) == (0.0, 1.0):
            return self.slider(path, label, 0, 1, 0.05)
        if hint in (int, float):
            return self.number(path, label, precision=0 if hint is int else None)
        return self.text(path, label)

    def _bounds(self, path: str) -> tuple[Any, Any]:
        *sections, leaf = path.split(".")
        owner: Any = self.spec_class
        for part in sections:
            owner = typing.get_type_hints(owner)[part]
        metadata = next(f.metadata for f in dataclasses.fields(owner) if f.name == leaf)
        return metadata.get("min"), metadata.get("max")

    def leaf_paths(self) -> list[str]:
        """Every field path of the spec down to its leaves ("train.learn_rate", ...): what a complete form
        has a control for."""
        return _leaves(self.spec_class, "")

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


def _leaves(spec_class: type[Spec], prefix: str) -> list[str]:
    hints = typing.get_type_hints(spec_class)
    paths = []
    for f in dataclasses.fields(spec_class):
        hint = hints[f.name]
        if isinstance(hint, type) and issubclass(hint, Spec):
            paths += _leaves(hint, f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


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
