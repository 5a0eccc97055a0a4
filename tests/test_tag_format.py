from __future__ import annotations

from liandan.preprocess.tag_format import TagFormat, select_tags, tags_to_caption

SCORES = {"long_hair": 0.9, "smile": 0.6, "rating:safe": 0.99, "red_(eyes)": 0.8, "hat": 0.4}


def test_a1111_defaults() -> None:
    fmt = TagFormat()
    tags = select_tags(SCORES, fmt)
    assert tags == ["long_hair", "red_(eyes)", "smile"]
    assert tags_to_caption(tags, SCORES, fmt) == r"long hair, red \(eyes\), smile"


def test_guide_threshold_score_order_filter_and_scores() -> None:
    fmt = TagFormat(threshold=0.75, sort="score", filter_tags="long hair", drop_rating=False,
                    use_spaces=False, escape_brackets=False, include_scores=True)  # fmt: skip
    tags = select_tags(SCORES, fmt)
    assert tags == ["rating:safe", "red_(eyes)"]
    assert tags_to_caption(tags, SCORES, fmt) == "(rating:safe:0.990), (red_(eyes):0.800)"
