from __future__ import annotations

from pathlib import Path

import pytest

from liandan.data.captions import caption_from_filename, compile_filename_regex, read_caption
from liandan.errors import ConfigError, DatasetError


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("00012-a red fox", "a red fox"),
        ("12-34- cat, sitting", "cat, sitting"),
        ("-5 x", "x"),
        ("a 2nd dog", "a 2nd dog"),  # digits only stripped at the start
        ("123", ""),
    ],
)
def test_leading_digits_and_dashes_are_stripped(stem: str, expected: str) -> None:
    assert caption_from_filename(stem, None, " ") == expected


def test_filename_regex_findall_joined() -> None:
    words = compile_filename_regex(r"[a-z]+")
    assert caption_from_filename("0001-red_fox (2)", words, " ") == "red fox"
    assert caption_from_filename("0001-red_fox", words, ", ") == "red, fox"
    groups = compile_filename_regex(r"([a-z])([a-z]+)")
    assert caption_from_filename("ab_cd", groups, "+") == "ab+cd"


def test_bad_regex_is_a_config_error() -> None:
    assert compile_filename_regex("") is None
    with pytest.raises(ConfigError, match=r"filename_regex '\(' is not a valid"):
        compile_filename_regex("(")


def test_txt_beside_the_image_wins(tmp_path: Path) -> None:
    image = tmp_path / "0003-some name.png"
    assert read_caption(image, None, " ") == "some name"
    image.with_suffix(".txt").write_text("a dog, running\n", encoding="utf-8")
    assert read_caption(image, None, " ") == "a dog, running"


def test_undecodable_caption_is_a_dataset_error_naming_the_file(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.with_suffix(".txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DatasetError, match=r"x\.txt is not UTF-8"):
        read_caption(image, None, " ")


def test_fixture_captions(fixtures_dir: Path) -> None:
    image = fixtures_dir / "train64" / "img0.png"
    assert read_caption(image, None, " ") == "a red circle on a white background"
