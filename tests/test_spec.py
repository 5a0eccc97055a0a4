from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from liandan.errors import ConfigError
from liandan.spec import MAX_NAME_BYTES, Spec, bounded, check_name, resolve_paths


@dataclass(frozen=True)
class Inner(Spec):
    folder: Path = Path()
    rate: float = bounded(0.5, 0.0, 1.0)
    label: str = "inner"


@dataclass(frozen=True)
class Outer(Spec):
    mode: Literal["fast", "slow"] = "fast"
    count: int = bounded(1, 1, 10)
    sizes: tuple[int, ...] = ()
    note: str = ""
    out: Path | None = None
    inner: Inner = field(default_factory=lambda: Inner(label="outer's own"))
    extra: tuple[Inner, ...] = ()

    def validate(self) -> None:
        if self.mode == "slow" and self.count > 5:
            raise ConfigError("a slow run counts to 5 at most")


def test_a_spec_round_trips_through_its_dict() -> None:
    spec = Outer(mode="slow", sizes=(1, 2), out=Path("/tmp/x"), extra=(Inner(rate=0.25),))
    data = spec.to_dict()
    assert data["out"] == "/tmp/x" and data["sizes"] == [1, 2] and data["extra"][0]["rate"] == 0.25
    assert Outer.from_dict(data) == spec


def test_values_from_toml_or_json_take_the_declared_types() -> None:
    spec = Outer.from_dict({"sizes": [3, 4], "note": 0.01, "out": "run", "inner": {"rate": 1, "folder": "a"}})
    assert spec.sizes == (3, 4) and spec.note == "0.01" and spec.out == Path("run")
    assert spec.inner.rate == 1.0 and isinstance(spec.inner.rate, float) and spec.inner.folder == Path("a")


def test_a_partial_section_keeps_the_fields_own_defaults() -> None:
    assert Outer.from_dict({"inner": {"rate": 0.1}}).inner == Inner(rate=0.1, label="outer's own")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": 11}, r"count = 11 is out of range \[1, 10\]"),
        ({"inner": {"rate": -0.1}}, r"rate = -0.1 is out of range \[0.0, 1.0\]"),
        ({"mode": "medium"}, "Outer.mode = 'medium': expected one of 'fast', 'slow'"),
        ({"count": "2"}, "Outer.count = '2': expected int"),
        ({"count": True}, "expected int"),
        ({"sizes": [1, "x"]}, "Outer.sizes = 'x': expected int"),
        ({"cuont": 2}, r"unknown setting\(s\) for Outer: cuont; did you mean 'count' \(for 'cuont'\)\?"),
        ({"zzzz": 2}, "valid: count, extra, inner, mode, note, out, sizes"),
        ({"mode": "slow", "count": 6}, "a slow run counts to 5 at most"),
    ],
)
def test_a_bad_value_is_refused_with_its_name(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(data)


def test_a_home_folder_is_expanded_on_construction() -> None:
    assert Outer(out=Path("~/runs")).out == Path.home() / "runs"
    assert Inner.from_dict({"folder": "~"}).folder == Path.home()


def test_relative_paths_resolve_against_a_base_in_nested_specs_too(tmp_path: Path) -> None:
    spec = Outer(out=Path("logs"), inner=Inner(folder=Path("a")), extra=(Inner(folder=Path("/abs")),))
    resolved = resolve_paths(spec, tmp_path)
    assert resolved.out == tmp_path / "logs" and resolved.inner.folder == tmp_path / "a"
    assert resolved.extra[0].folder == Path("/abs")
    assert resolve_paths(Inner(), tmp_path).folder == Path()  # unset stays unset


def test_one_naming_rule_for_every_artifact() -> None:
    for good in ("my style_v2.1", "日本語", "a-b"):  # A1111 keeps any alphanumeric
        check_name(good, "embedding")
    for bad in ("../evil", "a/b", "a\\b", "..", "***", "", "fancy*name?!", "x:1", " x", "é" * MAX_NAME_BYTES):
        with pytest.raises(ConfigError, match="name"):
            check_name(bad, "hypernetwork")
