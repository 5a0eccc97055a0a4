from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liandan.data.buckets import fit, make_buckets, nearest_bucket, plan_batches


def test_buckets_are_multiples_of_64_within_the_area_and_cover_both_orientations() -> None:
    buckets = make_buckets(512, 512)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert w * h <= 512 * 512
        assert w * h >= 512 * 512 * 0.8  # about the same cost per step
        assert max(w, h) / min(w, h) <= 4
    assert make_buckets(64, 64) == [(64, 64)]


def test_nearest_aspect() -> None:
    buckets = make_buckets(512, 512)
    assert nearest_bucket((1000, 1000), buckets) == (512, 512)
    wide = nearest_bucket((1920, 1080), buckets)
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 16 / 9) < 0.15
    tall = nearest_bucket((1080, 1920), buckets)
    assert tall == wide[::-1]


def test_fit_crop_covers_then_centres() -> None:
    g = fit((200, 100), (64, 64), "crop")
    assert g.resized_size == (128, 64) and g.crop_left_top == (32, 0) and g.target_size == (64, 64)
    assert g.flipped().crop_left_top == (32, 0)
    g = fit((301, 100), (64, 64), "crop")
    assert g.resized_size == (193, 64) and g.flipped().crop_left_top == (193 - g.crop_left_top[0] - 64, 0)
    stretched = fit((200, 100), (64, 64), "stretch")  # A1111: BICUBIC straight to W×H, no crop
    assert stretched.resized_size == (64, 64) and stretched.crop_left_top == (0, 0)
    assert stretched.original_size == (200, 100)


@given(w=st.integers(1, 3000), h=st.integers(1, 3000), tw=st.integers(1, 64), th=st.integers(1, 64))
def test_fit_crop_window_lies_inside_the_resized_image(w: int, h: int, tw: int, th: int) -> None:
    g = fit((w, h), (tw * 8, th * 8), "crop")
    for geometry in (g, g.flipped()):
        left, top = geometry.crop_left_top
        assert left >= 0 and left + tw * 8 <= g.resized_size[0]
        assert top >= 0 and top + th * 8 <= g.resized_size[1]


def test_one_group_drops_the_partial_batch_like_a1111() -> None:
    plan = plan_batches({"a": list(range(10))}, 4, random.Random(0))
    assert len(plan) == 2 and all(len(b) == 4 for b in plan)
    assert len({i for b in plan for i in b}) == 8
    assert plan == plan_batches({"a": list(range(10))}, 4, random.Random(0))
    assert plan != plan_batches({"a": list(range(10))}, 4, random.Random(1))


def test_batches_stay_within_a_bucket_and_fill_from_leftovers() -> None:
    groups = {(64, 64): [0, 1, 2, 3, 4], (128, 32): [5, 6, 7], (32, 128): [8]}
    plan = plan_batches(groups, 2, random.Random(3))
    assert len(plan) == 9 // 2 and all(len(b) == 2 for b in plan)
    where = {i: key for key, members in groups.items() for i in members}
    for batch in plan:
        assert len({where[i] for i in batch}) == 1, batch
    # a bucket smaller than the batch is topped up from itself
    for seed in range(10):
        lonely = plan_batches({"x": [0], "y": [1, 2, 3]}, 2, random.Random(seed))
        assert len(lonely) == 2
        assert all(batch == [0, 0] or 0 not in batch for batch in lonely)


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_every_image_is_used_about_equally(batch_size: int) -> None:
    groups = {"a": list(range(7)), "b": list(range(7, 10))}
    counts = Counter(
        i for epoch in range(60) for b in plan_batches(groups, batch_size, random.Random(epoch)) for i in b
    )
    assert set(counts) == set(range(10))
    assert max(counts.values()) <= 2 * min(counts.values())
