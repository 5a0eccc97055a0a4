"""Validated settings: the base of every job spec (liandan/jobs.py), and the one naming rule of artifacts.

A spec is a frozen dataclass validated once, on construction: types, Literal choices and number bounds for
every field, `~` expanded in every path, and each spec's own rules (`validate`: schedules, names, option
syntax). The runner and the loop receive values that are already valid. `from_dict` rejects unknown keys (a
typo in a TOML file is an error, not a silently ignored setting) and suggests the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from liandan.errors import ConfigError

NAME_PUNCTUATION = "._- "
MAX_NAME_BYTES = 200  # leaves room for suffixes such as "-neg.safetensors.optim" in a 255-byte file name
S = TypeVar("S", bound="Spec")


def _bounds(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"metadata": {"min": lo, "max": hi}}


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A number field with inclusive bounds, checked on construction."""
    return field(default=default, **_bounds(lo, hi))


@dataclass(frozen=True)
class Spec:
    """Base of all specs: validation, dict/JSON/TOML round-trip."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f"{type(self).__name__}.{f.name}", value, hints[f.name])
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ConfigError(f"{f.name} = {value!r} is out of range [{lo}, {hi}]")
            if isinstance(value, Path) and str(value).startswith("~"):
                object.__setattr__(self, f.name, value.expanduser())  # "~/pics" as a shell means it
        self.validate()

    def validate(self) -> None:
        """A spec's own rules beyond types and bounds (schedules, names, cross-field checks); ConfigError."""

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"kind", "spec_version"})
        if unknown:
            raise ConfigError(
                f"unknown setting(s) for {cls.__name__}: {', '.join(unknown)}{_nearest(unknown, names)}"
            )
        defaults = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in data.items():
            if name not in names:
                continue
            default = _field_default(defaults[name])
            if isinstance(default, Spec) and isinstance(value, Mapping):
                # a partial section keeps this job's own defaults (a hypernetwork's lr is not a TI's)
                value = {**default.to_dict(), **value}
            kwargs[name] = _coerce(name, value, hints[name])
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"{cls.__name__}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = _plain(value)
        return out

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)


def _nearest(unknown: list[str], names: set[str]) -> str:
    """'; did you mean 'learn_rate'?' for the first unknown key that resembles a valid one, else ''."""
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
        if close:
            return f"; did you mean {close[0]!r} (for {key!r})?"
    return f"; valid: {', '.join(sorted(names))}"


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn JSON/TOML values into the declared types (nested specs, paths, tuples)."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Spec) and isinstance(value, Mapping):
        return hint.from_dict(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if origin is tuple and isinstance(value, list | tuple):
        (item,) = get_args(hint)[:1]
        return tuple(_coerce(name, v, item) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a number where a schedule or other text is expected: learn_rate = 0.01
    return value


def check_name(name: str, what: str) -> None:
    """The one naming rule of every artifact (embedding, hypernetwork, LoRA, ...): A1111's letters, digits
    and `._- `, safe in a file name and in a prompt (`<hypernet:name:1>` breaks on ':')."""
    if not name.strip():
        raise ConfigError(f"the {what} needs a name")
    bad = sorted({c for c in name if not (c.isalnum() or c in NAME_PUNCTUATION)})
    if bad:
        allowed = f"use letters, digits and {NAME_PUNCTUATION!r}"
        raise ConfigError(f"{what} name {name!r}: {''.join(bad)!r} not allowed; {allowed}")
    if name != name.strip():
        raise ConfigError(f"{what} name {name!r} must not start or end with a space")
    if set(name) <= set(NAME_PUNCTUATION):
        raise ConfigError(f"{what} name {name!r} needs a letter or digit")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(
            f"{what} name {name[:24]!r}... is too long ({len(name.encode())} bytes in UTF-8; at most "
            f"{MAX_NAME_BYTES}, so that its files' names fit the 255 bytes a file system allows)"
        )


def _check_type(where: str, value: Any, hint: Any) -> None:
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(c) for c in get_args(hint))
            raise ConfigError(f"{where} = {value!r}: expected one of {choices}")
        return
    if origin in (typing.Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return
        errors = []
        for arg in args:
            try:
                _check_type(where, value, arg)
                return
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, tuple):
            raise ConfigError(f"{where} = {value!r}: expected a list")
        item = get_args(hint)[0]
        for v in value:
            _check_type(where, v, item)
        return
    if hint is Any or not isinstance(hint, type):
        return
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"{where} = {value!r}: expected {hint.__name__}")


def resolve_paths(spec: S, base: Path) -> S:
    """Relative paths in a job file mean relative to that file's folder, wherever the command runs."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, Path) and value != Path() and not value.is_absolute():
            changes[f.name] = base / value
        elif isinstance(value, Spec):
            changes[f.name] = resolve_paths(value, base)
        elif isinstance(value, tuple) and all(isinstance(v, Spec) for v in value):
            changes[f.name] = tuple(resolve_paths(v, base) for v in value)
    return dataclasses.replace(spec, **changes)
