"""Learning rates as pure functions of the optimizer step: A1111's schedule syntax and the named schedulers.

A schedule is asked `rate_at(step)` before each optimizer step (`step` = steps already done), so resume needs
no scheduler state and a resumed run gets exactly the rates of a straight one.

A1111's syntax (modules/textual_inversion/learn_schedule.py), same semantics:
- "0.005" or "0.005:-1": that rate until max_steps;
- "0.1:500, 0.01:1000": 0.1 while step < 500, then 0.01 while step < 1000, then the schedule has ended and
  training STOPS, even if max_steps is larger;
- end steps are capped at max_steps; pairs after the first one reaching max_steps are never used;
- a pair whose end step is at or before the current step is skipped (on resume).
Unlike A1111 we refuse malformed text up front (A1111 fails or silently misbehaves): non-numbers, negative
rates, end steps that do not increase, empty schedules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from liandan.errors import ConfigError

SYNTAX_HELP = (
    'expected a number like "0.005", or rate:until_step pairs like "0.1:500, 0.01:1000, 0.001:10000" '
    '("rate:-1" lasts until the last step)'
)


@dataclass(frozen=True)
class A1111Schedule:
    """`pairs`: (rate, end_step) with end steps increasing and capped at max_steps."""

    pairs: tuple[tuple[float, int], ...]

    @classmethod
    def parse(cls, text: str, max_steps: int, what: str = "learning rate") -> A1111Schedule:
        pairs: list[tuple[float, int]] = []
        for part in text.split(","):
            if not part.strip():
                continue
            fields = part.split(":")
            if len(fields) > 2:
                raise ConfigError(
                    f"{what} schedule {text!r}: {part.strip()!r} has more than one ':'; {SYNTAX_HELP}"
                )
            rate = _number(fields[0], float, text, what)
            if not math.isfinite(rate) or rate < 0:
                raise ConfigError(f"{what} schedule {text!r}: rate {rate} must be a finite number >= 0")
            end = _number(fields[1], int, text, what) if len(fields) == 2 else -1
            if end != -1 and end <= 0:
                raise ConfigError(
                    f"{what} schedule {text!r}: end step {end} must be > 0 (or -1 for 'until the end')"
                )
            if pairs and end != -1 and end <= pairs[-1][1]:
                raise ConfigError(
                    f"{what} schedule {text!r}: end steps must increase, but {end} follows {pairs[-1][1]}"
                )
            pairs.append((rate, end))
            if end == -1:
                break  # A1111 stops reading here: this rate lasts until max_steps
        if not pairs:
            raise ConfigError(f"{what} schedule {text!r} is empty; {SYNTAX_HELP}")
        capped: list[tuple[float, int]] = []
        for rate, end in pairs:
            capped.append((rate, max_steps if end == -1 else min(end, max_steps)))
            if capped[-1][1] == max_steps:
                break
        return cls(tuple(capped))

    def rate_at(self, step: int) -> float | None:
        """The rate for the optimizer step after `step` done steps; None once the schedule has ended."""
        for rate, end in self.pairs:
            if step < end:
                return rate
        return None

    def value_at(self, step: int) -> float:
        """Like `rate_at` but keeps the last value after the end (A1111's clip-value schedule does)."""
        rate = self.rate_at(step)
        return self.pairs[-1][0] if rate is None else rate


def _number(text: str, kind: type, schedule: str, what: str) -> float:
    try:
        return kind(text.strip())
    except ValueError:
        raise ConfigError(
            f"{what} schedule {schedule!r}: {text.strip()!r} is not a number; {SYNTAX_HELP}"
        ) from None


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _decay_factor(name: str, progress: float) -> float:
    """Multiplier after warm-up; `progress` runs from 0 to 1 over the decay steps."""
    if name in ("constant", "constant_with_warmup"):
        return 1.0
    if name == "linear":
        return max(0.0, 1.0 - progress)
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "cosine_with_restarts":  # two cycles: with diffusers' default of one it would equal "cosine"
        return 0.5 * (1.0 + math.cos(math.pi * ((2.0 * progress) % 1.0))) if progress < 1.0 else 0.0
    if name == "polynomial":  # diffusers' default power 1, with a floor of 1e-7 x the base rate
        return max(1e-7, 1.0 - progress)
    raise ConfigError(f"lr scheduler {name!r} is unknown")


@dataclass(frozen=True)
class LearnRate:
    """The job's learning rate: `rate_at(step)` gives the base rate, None when training must stop."""

    rate_at: Callable[[int], float | None]
    description: str


MAX_LEARN_RATE = 100.0  # Prodigy and D-Adaptation use ~1; far above, optimizers overflow float32


def _check_sane(rate: float, text: str) -> None:
    if rate > MAX_LEARN_RATE:
        raise ConfigError(
            f"learn_rate {text!r}: {rate:g} is far above any usable learning rate (at most "
            f"{MAX_LEARN_RATE:g}; embeddings train at ~0.005, hypernetworks at ~5e-6)"
        )


def learn_rate_schedule(text: str, scheduler: str, max_steps: int, warmup_steps: int = 0) -> LearnRate:
    """Build the schedule of a TrainSpec (`learn_rate`, `lr_scheduler`, `max_steps`, `lr_warmup_steps`).

    Warm-up ramps linearly over the first `warmup_steps` steps for every scheduler except "constant".
    """
    if scheduler == "a1111":
        a1111 = A1111Schedule.parse(text, max_steps)
        _check_sane(max(rate for rate, _ in a1111.pairs), text)

        def a1111_rate(step: int) -> float | None:
            rate = a1111.rate_at(step)
            return None if rate is None else rate * _warmup(step, warmup_steps)

        return LearnRate(a1111_rate, f"A1111 schedule {list(a1111.pairs)}")
    try:
        base = float(text)
    except ValueError:
        raise ConfigError(
            f"learn_rate {text!r} must be a plain number with lr_scheduler {scheduler!r} "
            '(schedules like "0.1:500, 0.01:1000" need lr_scheduler "a1111")'
        ) from None
    if not math.isfinite(base) or base < 0:
        raise ConfigError(f"learn_rate {text!r} must be a finite number >= 0")
    _check_sane(base, text)
    _decay_factor(scheduler, 0.0)  # an unknown name fails now, not at step 1
    if scheduler == "constant":
        warmup_steps = 0
    decay_steps = max(1, max_steps - warmup_steps)

    def named_rate(step: int) -> float | None:
        if step >= max_steps:
            return None
        if step < warmup_steps:
            return base * _warmup(step, warmup_steps)
        return base * _decay_factor(scheduler, (step - warmup_steps) / decay_steps)

    return LearnRate(named_rate, f"{scheduler} from {base} over {max_steps} steps, {warmup_steps} warm-up")


def clip_value_schedule(text: str, max_steps: int) -> A1111Schedule:
    """A1111 drives the gradient-clip value with the same syntax; it keeps its last value after the end."""
    return A1111Schedule.parse(text, max_steps, what="clip_grad_value")
