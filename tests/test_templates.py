from __future__ import annotations

import random
from pathlib import Path

import pytest

from liandan.data.templates import BUILTIN_TEMPLATES_DIR, PromptTemplate, list_templates, resolve_template
from liandan.errors import DatasetError

SHIPPED = [
    "hypernetwork.txt",
    "none.txt",
    "style.txt",
    "style_filewords.txt",
    "subject.txt",
    "subject_filewords.txt",
]


def test_we_ship_the_six_templates_with_the_right_placeholders() -> None:
    assert sorted(p.name for p in BUILTIN_TEMPLATES_DIR.glob("*.txt")) == SHIPPED
    for name in SHIPPED:
        template = PromptTemplate.load(name)
        assert template.uses_filewords == ("filewords" in name or name == "hypernetwork.txt"), name
        if name.startswith(("style", "subject")):
            assert all("[name]" in line for line in template.lines), name


def test_user_folder_overrides_ours_and_paths_work(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / "nested").mkdir(parents=True)
    (user / "nested" / "style.txt").write_text("mine [name]\n")
    (user / "extra.txt").write_text("extra\n")
    assert list_templates(user)["style.txt"] == user / "nested" / "style.txt"
    assert resolve_template("subject.txt", user) == BUILTIN_TEMPLATES_DIR / "subject.txt"
    assert resolve_template("extra.txt", user) == user / "extra.txt"
    elsewhere = tmp_path / "t.txt"
    elsewhere.write_text("x\n")
    assert resolve_template(str(elsewhere)) == elsewhere
    with pytest.raises(DatasetError, match=r"'nope\.txt' not found.*known templates: .*style\.txt"):
        resolve_template("nope.txt", user)


def test_empty_template_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DatasetError, match="no prompt lines"):
        PromptTemplate.load(str(empty))


def _template(tmp_path: Path, text: str, **kwargs) -> PromptTemplate:
    path = tmp_path / "t.txt"
    path.write_text(text)
    return PromptTemplate.load(str(path), **kwargs)


def test_substitution(tmp_path: Path) -> None:
    template = _template(tmp_path, "a [filewords] by [name]\n\n")
    assert template.lines == ("a [filewords] by [name]",)
    assert template.fill("cat, dog", "me", random.Random(0)) == "a cat, dog by me"


def test_dropout_and_shuffle_follow_a1111_and_are_reproducible(tmp_path: Path) -> None:
    caption = ",".join(f"t{i}" for i in range(20))
    shuffled = _template(tmp_path, "[filewords]", shuffle_tags=True)
    first = shuffled.fill(caption, "n", random.Random(5))
    assert first == shuffled.fill(caption, "n", random.Random(5))
    assert first != shuffled.fill(caption, "n", random.Random(6))
    assert sorted(first.split(",")) == sorted(caption.split(","))  # shuffle keeps every tag
    dropped = _template(tmp_path, "[filewords]", tag_dropout=0.5)
    kept = dropped.fill(caption, "n", random.Random(1)).split(",")
    assert 0 < len(kept) < 20 and kept == sorted(kept, key=lambda t: int(t[1:]))  # order kept
    # A1111's rule: a tag survives when random() > p
    rng = random.Random(1)
    rng.choice(dropped.lines)
    assert kept == [t for t in caption.split(",") if rng.random() > 0.5]
    assert _template(tmp_path, "[filewords]", tag_dropout=1.0).fill(caption, "n", random.Random(0)) == ""
