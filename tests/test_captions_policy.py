from __future__ import annotations

import pytest

from liandan.preprocess.captions_policy import (
    MAX_NAME_BYTES,
    apply_policy,
    caption_file_name,
    join_captions,
    read_existing_caption,
)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("ignore", "new"), ("keep", "old"), ("prepend", "old, new"), ("append", "new, old")],
)
def test_policies(policy, expected) -> None:
    assert apply_policy("old", "new", policy) == expected
    assert apply_policy(None, "new", policy) == "new"


def test_join_skips_empty_parts() -> None:
    assert join_captions(["1girl, solo", "", " a photo "]) == "1girl, solo, a photo"


def test_caption_in_name_is_safe_and_bounded() -> None:
    name = caption_file_name(7, 'a cat: "sitting" / on a mat?' + "猫" * 200, ".png")
    assert name.startswith("00007-a cat sitting  on a mat")
    assert name.endswith(".png") and len(name.encode()) <= MAX_NAME_BYTES
    assert not set('<>:"/\\|?*') & set(name)


def test_read_existing_caption(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    assert read_existing_caption(tmp_path / "a.png") is None
    (tmp_path / "a.txt").write_text(" hello \n", encoding="utf-8")
    assert read_existing_caption(tmp_path / "a.png") == "hello"
