"""The CFG scale syntax of APT's guided loss: fixed, ranges, curves, and what is refused."""

from __future__ import annotations

import pytest

from liandan.errors import ConfigError
from liandan.train.guidance import CURVES, CfgScale, parse_cfg_scale


def test_fixed_scales_and_ranges() -> None:
    assert parse_cfg_scale("5") == CfgScale(5.0, 5.0) and parse_cfg_scale("5").fixed
    assert parse_cfg_scale(" 3 - 5 ") == CfgScale(3.0, 5.0, "linear")
    assert parse_cfg_scale("3-5:cos") == CfgScale(3.0, 5.0, "cos")
    assert parse_cfg_scale("4-4").at(0.3) == 4.0


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_every_curve_spans_the_range_and_rises(curve: str) -> None:
    scale = parse_cfg_scale(f"2-6:{curve}")
    values = [scale.at(u / 10) for u in range(11)]
    assert values[0] == 2.0 and values[-1] == pytest.approx(6.0)
    assert values == sorted(values)


def test_curves_shape_the_draw() -> None:
    middle = {name: parse_cfg_scale(f"0-1:{name}").at(0.25) for name in CURVES}
    assert middle["square"] < middle["cos"] < middle["linear"] < middle["sqrt"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5-3", "goes down"),
        ("a-b", "'a' is not a number"),
        ("3-5:unknowncurve", "unknown curve 'unknowncurve'; expected one of linear, cos"),
        ("5:cos", "a curve needs a range"),
        ("", "is not a number"),
        ("-3", "is not a number"),
        ("3-inf", "finite"),
        ("__import__('os')", "is not a number"),
    ],
)
def test_malformed_scales_are_refused_with_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_cfg_scale(text)
