"""The caption of a dataset image, by A1111's rules.

A `<stem>.txt` beside the image wins. Otherwise the file name: leading digits and dashes are stripped
(`^[-\\d]+\\s*`, so "00012-a red fox.png" gives "a red fox"), then, when a filename regex is set, its
`findall` matches are joined with the join string (A1111's `dataset_filename_word_regex` and
`dataset_filename_join_string`).

Unlike A1111, surrounding whitespace of a .txt caption is stripped (a trailing newline); CLIP's tokenizer
ignores it anyway, so the text the model sees is the same.
"""

from __future__ import annotations

import re
from pathlib import Path

from liandan.errors import ConfigError, DatasetError

LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")


def compile_filename_regex(pattern: str) -> re.Pattern[str] | None:
    """The filename word regex, or None when unset. A malformed pattern is a ConfigError."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"filename_regex {pattern!r} is not a valid regular expression: {e}") from e


def caption_from_filename(stem: str, word_regex: re.Pattern[str] | None, join_string: str) -> str:
    text = LEADING_NUMBERS.sub("", stem)
    if word_regex is None:
        return text
    return join_string.join(_as_text(match) for match in word_regex.findall(text))


def _as_text(match: str | tuple[str, ...]) -> str:
    # findall gives tuples when the pattern has several groups; A1111 would fail there, we join them
    return match if isinstance(match, str) else "".join(match)


def caption_file(image_path: Path) -> Path:
    return image_path.with_suffix(".txt")


def read_caption(image_path: Path, word_regex: re.Pattern[str] | None, join_string: str) -> str:
    """The caption for one image: its .txt file, else its file name."""
    text_path = caption_file(image_path)
    if text_path.is_file():
        try:
            text = text_path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as e:
            raise DatasetError(
                f"caption file {text_path} is not UTF-8 text ({e.reason} at byte {e.start})"
            ) from e
        except OSError as e:
            raise DatasetError(f"cannot read caption file {text_path}: {e.strerror or e}") from e
        if "\0" in text:
            raise DatasetError(f"caption file {text_path} holds NUL bytes: it is not a text file")
        return text
    return caption_from_filename(image_path.stem, word_regex, join_string)
