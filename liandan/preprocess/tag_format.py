"""Turn tagger scores into a caption string: threshold, drop, sort, spaces, escapes, scores (A1111 rules)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

_SPECIAL = re.compile(r"([\\()])")


@dataclass(frozen=True)
class TagFormat:
    threshold: float = 0.5
    sort: Literal["alphabetical", "score"] = "alphabetical"
    use_spaces: bool = True
    escape_brackets: bool = True
    filter_tags: str = ""  # comma-separated; "long hair" and "long_hair" both match
    drop_rating: bool = True
    include_scores: bool = False


def filter_set(filter_tags: str) -> set[str]:
    return {t.strip().replace(" ", "_") for t in filter_tags.split(",") if t.strip()}


def format_tag(tag: str, score: float, fmt: TagFormat) -> str:
    text = tag.replace("_", " ") if fmt.use_spaces else tag
    if fmt.escape_brackets:
        text = _SPECIAL.sub(r"\\\1", text)
    return f"({text}:{score:.3f})" if fmt.include_scores else text


def select_tags(scores: Mapping[str, float], fmt: TagFormat, threshold: float | None = None) -> list[str]:
    """Tags at or above the threshold, minus `rating:` tags and filtered ones, sorted as asked."""
    limit = fmt.threshold if threshold is None else threshold
    blocked = filter_set(fmt.filter_tags)
    kept = {
        tag: score
        for tag, score in scores.items()
        if score >= limit
        and not (fmt.drop_rating and tag.startswith("rating:"))
        and tag.replace(" ", "_") not in blocked
    }
    if fmt.sort == "alphabetical":
        return sorted(kept)
    return sorted(kept, key=lambda t: -kept[t])


def tags_to_caption(tags: Iterable[str], scores: Mapping[str, float], fmt: TagFormat) -> str:
    return ", ".join(format_tag(tag, scores[tag], fmt) for tag in tags)
