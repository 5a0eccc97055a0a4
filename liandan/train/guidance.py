"""The CFG scale of a guided training loss (APT): a fixed scale "5", or a range "3-5" drawn anew every step,
with an optional curve "3-5:cos" that shapes the draw. Parsed once, when the job spec is built; never eval'd.

A draw u ~ U(0, 1) becomes `low + (high - low) * curve(u)`: "linear" spreads the scales evenly, "cos"
((1 - cos(pi u)) / 2) favours both ends, "square" (u²) the low end, "sqrt" (√u) the high end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from liandan.errors import ConfigError

CURVES: dict[str, Callable[[float], float]] = {
    "linear": lambda u: u,
    "cos": lambda u: (1.0 - math.cos(math.pi * u)) / 2.0,
    "square": lambda u: u * u,
    "sqrt": math.sqrt,
}
EXAMPLES = "'5', '3-5' or '3-5:cos'"


@dataclass(frozen=True)
class CfgScale:
    low: float
    high: float
    curve: str = "linear"

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def at(self, u: float) -> float:
        """The scale for a uniform draw `u` in [0, 1]."""
        return self.low + (self.high - self.low) * CURVES[self.curve](u)


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"cfg_scale {whole!r}: {text.strip()!r} is not a number; expected {EXAMPLES}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"cfg_scale {whole!r}: {value} must be a finite number >= 0; expected {EXAMPLES}")
    return value


def parse_cfg_scale(text: str) -> CfgScale:
    """'5' → fixed 5; '3-5' → a linear range; '3-5:cos' → a range with a named curve (see CURVES)."""
    whole = text
    scales, _, curve = text.partition(":")
    curve = curve.strip() or "linear"
    if curve not in CURVES:
        raise ConfigError(
            f"cfg_scale {whole!r}: unknown curve {curve!r}; expected one of {', '.join(CURVES)}"
        )
    low_text, dash, high_text = scales.strip().partition("-")
    low = _number(low_text, whole)
    if not dash:
        if ":" in text:
            raise ConfigError(f"cfg_scale {whole!r}: a curve needs a range 'low-high'; expected {EXAMPLES}")
        return CfgScale(low, low)
    high = _number(high_text, whole)
    if high < low:
        raise ConfigError(f"cfg_scale {whole!r}: the range goes down ({low} > {high}); write it 'low-high'")
    return CfgScale(low, high, curve)
