"""A1111's learning-rate schedule syntax with its exact semantics, and the named schedulers."""

from __future__ import annotations

import math

import pytest

from liandan.errors import ConfigError
from liandan.train.lr_schedule import A1111Schedule, clip_value_schedule, learn_rate_schedule


def rates(text: str, max_steps: int, steps: range) -> list[float | None]:
    schedule = A1111Schedule.parse(text, max_steps)
    return [schedule.rate_at(s) for s in steps]


def test_single_rate_lasts_until_max_steps_then_ends() -> None:
    assert rates("0.005", 4, range(6)) == [0.005] * 4 + [None, None]
    assert rates("0.005:-1", 4, range(5)) == [0.005] * 4 + [None]


def test_pairs_switch_at_their_end_step_and_the_schedule_ends() -> None:
    # A1111: 0.1 while step < 2, 0.01 while step < 4; at step 4 `finished` and training stops.
    assert rates("0.1:2, 0.01:4", 100, range(6)) == [0.1, 0.1, 0.01, 0.01, None, None]


def test_end_steps_are_capped_at_max_steps_and_later_pairs_ignored() -> None:
    assert A1111Schedule.parse("0.1:2, 0.01:1000, 0.001:5000", 10).pairs == ((0.1, 2), (0.01, 10))
    assert A1111Schedule.parse("0.1:10, 0.01:20", 10).pairs == ((0.1, 10),)
    assert A1111Schedule.parse("0.1:5, 0.2:-1, 0.3:50", 10).pairs == ((0.1, 5), (0.2, 10))


def test_resume_skips_pairs_that_ended_at_or_before_the_current_step() -> None:
    schedule = A1111Schedule.parse("0.1:500, 0.01:1000, 0.001:10000", 20000)
    assert schedule.rate_at(499) == 0.1
    assert schedule.rate_at(500) == 0.01  # the pair ending at 500 is skipped when resuming at 500
    assert schedule.rate_at(9999) == 0.001
    assert schedule.rate_at(10000) is None


def test_spaces_and_empty_items_are_ignored_like_a1111() -> None:
    assert A1111Schedule.parse(" 1e-5 : 3 ,, 2e-6:6,", 10).pairs == ((1e-5, 3), (2e-6, 6))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1:abc", "'abc' is not a number"),
        ("abc", "'abc' is not a number"),
        ("0.1:500, 0.2:100", "must increase"),
        ("-0.1", ">= 0"),
        ("", "empty"),
        (" , ", "empty"),
        ("0.1:0", "must be > 0"),
        ("0.1:5:6", "more than one"),
        ("nan", "finite"),
    ],
)
def test_malformed_schedules_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        A1111Schedule.parse(text, 1000)


def test_clip_value_keeps_its_last_value_after_the_end() -> None:
    clip = clip_value_schedule("0.5:2, 0.1:4", 100)
    assert [clip.value_at(s) for s in range(6)] == [0.5, 0.5, 0.1, 0.1, 0.1, 0.1]
    with pytest.raises(ConfigError, match="clip_grad_value"):
        clip_value_schedule("x", 10)


def test_a1111_schedule_with_warmup_ramps_up() -> None:
    lr = learn_rate_schedule("0.1", "a1111", 10, warmup_steps=4)
    assert [lr.rate_at(s) for s in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


def test_named_schedulers() -> None:
    def at(name: str, steps: list[int], warmup: int = 0) -> list[float | None]:
        lr = learn_rate_schedule("0.1", name, 100, warmup)
        return [lr.rate_at(s) for s in steps]

    assert at("constant", [0, 99, 100], warmup=10) == [0.1, 0.1, None]  # "constant" has no warm-up
    assert at("constant_with_warmup", [0, 9, 50], warmup=10) == pytest.approx([0.01, 0.1, 0.1])
    assert at("linear", [0, 50, 99]) == pytest.approx([0.1, 0.05, 0.001])
    assert at("cosine", [0, 50]) == pytest.approx([0.1, 0.05])
    assert at("cosine", [99])[0] < 1e-4
    restarts = at("cosine_with_restarts", [0, 25, 49, 50])
    assert restarts[0] == pytest.approx(0.1) and restarts[3] == pytest.approx(0.1)  # the restart
    assert restarts[1] == pytest.approx(0.05) and restarts[2] < 1e-3
    assert at("polynomial", [0, 50]) == pytest.approx([0.1, 0.05])
    assert at("linear", [10, 55], warmup=10) == pytest.approx([0.1, 0.05])
    assert at("linear", [100]) == [None]


def test_named_scheduler_needs_a_plain_number() -> None:
    with pytest.raises(ConfigError, match='lr_scheduler "a1111"'):
        learn_rate_schedule("0.1:500", "cosine", 1000)
    with pytest.raises(ConfigError, match="finite"):
        learn_rate_schedule("inf", "linear", 1000)
    with pytest.raises(ConfigError, match="unknown"):
        learn_rate_schedule("0.1", "exponential", 1000)


def test_rates_are_pure_functions_of_the_step() -> None:
    lr = learn_rate_schedule("0.3", "cosine", 40, 5)
    first = [lr.rate_at(s) for s in range(40)]
    assert first == [lr.rate_at(s) for s in range(40)]
    assert all(r is not None and math.isfinite(r) for r in first)
